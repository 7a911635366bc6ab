//! Command-line interface.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// parkguard — park-level safety monitoring for chemical industrial parks.
///
/// parkguard is a monitoring, recording and linkage layer ABOVE the enterprises' own gas
/// detection systems (GDS, GB/T 50493 §3.0.8); it never replaces them and must never be
/// the only path of a safety alarm.
#[derive(Debug, Parser)]
#[command(name = "parkguard", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default). Filter with RUST_LOG.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon with a park config file.
    Run {
        /// The park config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate config files without starting anything. Prints every error as
    /// FILE:LINE:COL: message and exits 2 on errors, 0 with a summary when valid.
    CheckConfig {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the config file (for editors' TOML support).
    ConfigSchema,
    /// Test candidate limits on recorded history: run the current and the candidate limits
    /// over the same readings at full speed and report what would have changed.
    Backtest {
        /// The current park config.
        #[arg(long, short)]
        config: PathBuf,
        /// The candidate: a park config with changed limits (points matched by tag).
        #[arg(long)]
        limits: PathBuf,
        /// Recorded readings: InfluxDB line protocol or annotated CSV (`influx query --raw`).
        #[arg(long)]
        data: PathBuf,
        /// Start of the window (RFC 3339, e.g. 2026-11-25T00:00:00+08:00).
        #[arg(long)]
        from: Option<String>,
        /// End of the window (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Simulate a park's field devices: serve the Modbus simulator (Midas-, Oldham- and
    /// 4-in-1-like detectors on unit ids 1, 2, 3) and publish plausible readings of every
    /// point without a Modbus device to the config's first MQTT broker.
    Simulate {
        /// The park config whose points to simulate.
        #[arg(long, short)]
        config: PathBuf,
        /// Serve the Modbus simulator here (e.g. 127.0.0.1:1502); omit to skip Modbus.
        #[arg(long)]
        modbus: Option<SocketAddr>,
        /// Do not publish to MQTT.
        #[arg(long)]
        no_mqtt: bool,
    },
    /// Drills (演练): run one offline, or start, watch and stop drills in a running daemon.
    Drill {
        /// What to do.
        #[command(subcommand)]
        action: DrillAction,
    },
    /// Manage console users (argon2 password hashes in a users file).
    User {
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Run the embedded demo: simulated park, local storage, console in the browser.
    Demo {
        /// Listen address of the console and API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Data directory (default: a fresh temp dir, removed at exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the demo config and exit.
        #[arg(long)]
        print_config: bool,
    },
}

/// How to reach a running daemon's API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the daemon's API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub api: String,
    /// Log in as this user (password in PARKGUARD_PASSWORD); default: the API token in
    /// PARKGUARD_TOKEN.
    #[arg(long)]
    pub user: Option<String>,
}

/// `parkguard drill ...`
#[derive(Debug, Subcommand)]
pub enum DrillAction {
    /// Run a drill offline: a scenario through a separate engine instance (every event
    /// stamped with the drill id), recorded in the park's journal, with a JSON and HTML
    /// report. Production channels never receive drill events.
    Run {
        /// The park config.
        #[arg(long, short)]
        config: PathBuf,
        /// The scenario file (see deploy/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// Drill id (default: drill-<unix seconds>).
        #[arg(long)]
        id: Option<String>,
        /// Speed over real time (1, 10, 60, …); 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Where to write `<id>.json` and `<id>.html`.
        #[arg(long, default_value = ".")]
        report_dir: PathBuf,
    },
    /// Start a drill in a running daemon: a scenario by name, or a replay of its archive.
    Start {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Scenario name (`chlorine-release`, `hydrocarbon-leak`, or one in
        /// `<data.dir>/scenarios/`).
        #[arg(long, conflicts_with = "replay")]
        scenario: Option<String>,
        /// Replay the daemon's local archive instead.
        #[arg(long)]
        replay: bool,
        /// Replay window start (RFC 3339).
        #[arg(long, requires = "replay")]
        from: Option<String>,
        /// Replay window end (RFC 3339, exclusive).
        #[arg(long, requires = "replay")]
        to: Option<String>,
        /// Replay only this point (repeatable).
        #[arg(long = "point", requires = "replay")]
        points: Vec<String>,
        /// Replay only this enterprise's points (repeatable).
        #[arg(long = "enterprise", requires = "replay")]
        enterprises: Vec<String>,
        /// 1x, 10x, 60x or max.
        #[arg(long, default_value = "1x")]
        speed: String,
        /// Drill id (default: drill-<unix seconds>).
        #[arg(long)]
        id: Option<String>,
    },
    /// Status of one drill, or of every drill.
    Status {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: Option<String>,
    },
    /// Pause a drill (its clock stops).
    Pause {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: String,
    },
    /// Resume a paused drill.
    Resume {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: String,
    },
    /// Stop a drill; prints its final report.
    Stop {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: String,
    },
    /// Acknowledge a drill alarm.
    Ack {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: String,
        /// Alarm id (TAG:HH) or source tag.
        alarm: String,
    },
    /// A drill's report: JSON on stdout, or the printable HTML page into a file.
    Report {
        /// The daemon.
        #[command(flatten)]
        api: ApiArgs,
        /// Drill id.
        id: String,
        /// Write the HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// `parkguard user ...`
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user (the password is read from the PARKGUARD_PASSWORD environment variable or
    /// from standard input, never from the command line).
    Add {
        /// The users file (default of a park: `<data.dir>/users.toml`).
        #[arg(long)]
        file: PathBuf,
        /// User name.
        name: String,
        /// Role: viewer, operator, engineer or admin.
        role: String,
    },
}
