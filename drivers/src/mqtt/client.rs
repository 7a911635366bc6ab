//! Building rumqttc options from a validated [`MqttBroker`]: password from env or file,
//! TLS with the ring provider (no aws-lc build), packet limits; for MQTT 3.1.1
//! ([`mqtt_options`]) and MQTT 5 ([`mqtt_options_v5`]).

use super::MqttError;
use super::config::{MqttBroker, MqttTls, PasswordSource};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::sync::Arc;

/// Read the password named by the broker config (env var or file, trailing newline cut).
pub fn resolve_password(broker: &MqttBroker) -> Result<Option<String>, MqttError> {
    match &broker.password {
        PasswordSource::None => Ok(None),
        PasswordSource::Env(name) => std::env::var(name).map(Some).map_err(|_| {
            MqttError::Credentials(format!("environment variable `{name}` is not set"))
        }),
        PasswordSource::File(path) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|e| MqttError::Credentials(format!("cannot read {}: {e}", path.display()))),
    }
}

fn read_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, MqttError> {
    let data =
        std::fs::read(path).map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(MqttError::Tls(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Build a rustls client config (ring provider, TLS 1.2 and 1.3).
pub fn tls_client_config(tls: &MqttTls) -> Result<rustls::ClientConfig, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| MqttError::Tls(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // Unparseable system certificates are skipped, like every TLS client does.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(MqttError::Tls(
                    "no system CA certificates found; set `tls.ca_file`".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client_auth {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let data = std::fs::read(key)
                .map_err(|e| MqttError::Tls(format!("{}: {e}", key.display())))?;
            let key_der = rustls_pemfile::private_key(&mut data.as_slice())
                .map_err(|e| MqttError::Tls(format!("{}: {e}", key.display())))?
                .ok_or_else(|| {
                    MqttError::Tls(format!("{}: no PEM private key found", key.display()))
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// rumqttc options for `broker` with this client id. Reads the password and the TLS files.
pub fn mqtt_options(broker: &MqttBroker, client_id: &str) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(broker.keep_alive);
    o.set_clean_session(broker.clean_session);
    o.set_max_packet_size(broker.max_packet_size, broker.max_packet_size);
    if let Some(user) = &broker.username {
        o.set_credentials(user.clone(), resolve_password(broker)?.unwrap_or_default());
    }
    if let Some(tls) = &broker.tls {
        let cfg = tls_client_config(tls)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}

/// The MQTT 3.1.1 client's socket options: `TCP_NODELAY` (rumqttc leaves Nagle's algorithm
/// on). parkguard's packets are small and each one matters now: an alarm PUBLISH or a
/// batch of PUBACKs must not wait for the broker's TCP acknowledgement of the previous
/// segment (up to the broker's delayed-ACK timer, ~40 ms on Linux).
pub fn event_loop(opts: MqttOptions, cap: usize) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, cap);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (client, el)
}

/// rumqttc MQTT 5 options for `broker` with this client id (`TCP_NODELAY` on, see
/// [`event_loop`]). Reads the password and the TLS files. A persistent session is
/// `clean_start = false` with a session expiry above 0 (MQTT 5 §3.1.2.11.2: with 0 the
/// session ends when the network connection closes).
pub fn mqtt_options_v5(
    broker: &MqttBroker,
    client_id: &str,
) -> Result<rumqttc::v5::MqttOptions, MqttError> {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // TCP_NODELAY, as for MQTT 3.1.1 ([`event_loop`]).
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    o.set_keep_alive(broker.keep_alive);
    o.set_clean_start(broker.clean_session);
    o.set_session_expiry_interval((!broker.clean_session).then_some(broker.session_expiry_s));
    // Announced to the broker (CONNECT Maximum Packet Size): it discards larger messages
    // for this client instead of sending them, and rumqttc refuses larger incoming ones.
    o.set_max_packet_size(Some(
        u32::try_from(broker.max_packet_size).unwrap_or(u32::MAX),
    ));
    if let Some(user) = &broker.username {
        o.set_credentials(user.clone(), resolve_password(broker)?.unwrap_or_default());
    }
    if let Some(tls) = &broker.tls {
        let cfg = tls_client_config(tls)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}
