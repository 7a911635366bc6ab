//! The embedded broker for `parkguard demo`: rumqttd in-process (MQTT 3.1.1, plain TCP).
//!
//! rumqttd's traps (TESTING.md) and how they are handled here:
//! - it cannot report a port-0 bind → the caller passes a concrete address;
//!   [`reserve_port`] finds a free one;
//! - a failed bind is only logged → [`start_embedded`] checks the port is free first and
//!   then verifies the broker by connecting and completing an MQTT CONNECT/CONNACK;
//! - memory is bounded by `max_segment_size × max_segment_count` per topic filter → small
//!   segments (1 MiB × 4);
//! - there is no shutdown API and sessions live in memory → the broker runs for the life of
//!   the process, which suits the demo (production uses the park's broker).

use super::MqttError;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A running embedded broker (lives until the process exits).
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn reserve_port() -> Result<u16, MqttError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| MqttError::Broker(e.to_string()))?;
    Ok(l.local_addr()
        .map_err(|e| MqttError::Broker(e.to_string()))?
        .port())
}

fn config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "parkguard-embedded-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 1 << 20,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Start rumqttd on `addr` and return once an MQTT client got a CONNACK from it.
/// Blocking for up to ~5 s; call it before (or with `spawn_blocking` inside) the runtime.
pub fn start_embedded(addr: SocketAddr) -> Result<EmbeddedBroker, MqttError> {
    // rumqttd only logs a failed bind: make sure the port is ours to take.
    drop(TcpListener::bind(addr).map_err(|e| {
        MqttError::Broker(format!(
            "cannot listen on {addr}: {e} (is another broker running?)"
        ))
    })?);
    let mut broker = rumqttd::Broker::new(config(addr));
    std::thread::Builder::new()
        .name("embedded-mqtt".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded mqtt broker stopped");
            }
        })
        .map_err(|e| MqttError::Broker(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match mqtt_ping(addr) {
            Ok(()) => return Ok(EmbeddedBroker { addr }),
            Err(e) if Instant::now() > deadline => {
                return Err(MqttError::Broker(format!(
                    "embedded broker on {addr} does not answer: {e}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Connect, send an MQTT 3.1.1 CONNECT, expect a CONNACK accepting it.
fn mqtt_ping(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let id = b"parkguard-probe";
    let mut pkt = vec![0x10, (10 + 2 + id.len()) as u8];
    pkt.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    pkt.extend_from_slice(&(id.len() as u16).to_be_bytes());
    pkt.extend_from_slice(id);
    s.write_all(&pkt)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!("unexpected reply {ack:?}")));
    }
    let _ = s.write_all(&[0xe0, 0]);
    Ok(())
}
