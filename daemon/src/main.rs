//! The `parkguard` binary: a thin CLI over the `parkguard` library.

use anyhow::Result;
use clap::Parser;
use parkguard::cli::{Cli, Command, LogFormat};
use parkguard::config;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { files } => check_config(&files),
        Command::ConfigSchema => {
            println!("{}", parkguard::config::schema_json());
            ExitCode::SUCCESS
        }
        Command::Run { config } => {
            init_logging(cli.log_format);
            exit(parkguard::run::run_file(&config))
        }
        Command::Backtest {
            config,
            limits,
            data,
            from,
            to,
            json,
        } => exit(parkguard::drill::cli::backtest(
            &config,
            &limits,
            &data,
            from.as_deref(),
            to.as_deref(),
            json,
        )),
        Command::Simulate {
            config,
            modbus,
            no_mqtt,
        } => {
            init_logging(cli.log_format);
            exit(parkguard::run::simulate(&config, modbus, !no_mqtt))
        }
        Command::Drill { action } => {
            init_logging(cli.log_format);
            exit(drill_cmd(action))
        }
        Command::User { action } => match action {
            parkguard::cli::UserAction::Add { file, name, role } => {
                exit(add_user(&file, &name, &role))
            }
        },
        Command::Demo {
            listen,
            data_dir,
            print_config,
        } => {
            if print_config {
                print!("{}", parkguard::demo::DEMO_CONFIG);
                return ExitCode::SUCCESS;
            }
            init_logging(cli.log_format);
            exit(parkguard::demo::run(listen, data_dir))
        }
    }
}

fn exit(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parkguard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit 2 on any error, 0 when every file is valid.
fn check_config(files: &[std::path::PathBuf]) -> ExitCode {
    let mut bad = 0usize;
    for f in files {
        match config::load_file(f) {
            Ok(cfg) => {
                // The users file of a production park: no demo users, no default passwords.
                // (Checked when it exists on this machine; `run` refuses to serve without it.)
                let users = cfg.api.users_file(&cfg.data.dir);
                let problems = if users.exists() {
                    parkguard::auth::check_users_file(&users, cfg.park.production)
                } else {
                    Vec::new()
                };
                if problems.is_empty() {
                    println!("{}: ok: {}", f.display(), cfg.summary());
                } else {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!(
                        "{}: {} error(s) in the users file",
                        f.display(),
                        problems.len()
                    );
                    bad += 1;
                }
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", f.display(), errors.len());
                bad += 1;
            }
        }
    }
    if bad > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn add_user(file: &std::path::Path, name: &str, role: &str) -> Result<()> {
    let role: parkguard::auth::Role = role
        .parse()
        .map_err(|e| anyhow::anyhow!("role `{role}`: {e:?}"))?;
    let password = match std::env::var("PARKGUARD_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    parkguard::auth::add_user(file, name, role, &password)
        .map_err(|e| anyhow::anyhow!("cannot add `{name}`: {e}"))?;
    println!("added `{name}` ({role:?}) to {}", file.display());
    Ok(())
}

fn drill_cmd(action: parkguard::cli::DrillAction) -> anyhow::Result<()> {
    use parkguard::cli::DrillAction as A;
    use parkguard::drill::remote::{self, Remote};
    let (api, what) = match action {
        A::Run {
            config,
            scenario,
            id,
            speed,
            report_dir,
        } => return parkguard::drill::cli::drill(&config, &scenario, id, speed, &report_dir),
        A::Start {
            api,
            scenario,
            replay,
            from,
            to,
            points,
            enterprises,
            speed,
            id,
        } => {
            let mut body = serde_json::json!({ "speed": speed });
            if let Some(id) = id {
                body["id"] = id.into();
            }
            match (scenario, replay) {
                (Some(s), false) => body["scenario"] = s.into(),
                (None, true) => {
                    body["replay"] = serde_json::json!({
                        "from": from, "to": to, "points": points, "enterprises": enterprises
                    })
                }
                _ => anyhow::bail!("give --scenario NAME or --replay"),
            }
            (api, Remote::Start(body))
        }
        A::Status { api, id } => (api, Remote::Status(id)),
        A::Pause { api, id } => (api, Remote::Pause(id)),
        A::Resume { api, id } => (api, Remote::Resume(id)),
        A::Stop { api, id } => (api, Remote::Stop(id)),
        A::Ack { api, id, alarm } => (api, Remote::Ack { id, alarm }),
        A::Report { api, id, html } => (api, Remote::Report { id, html }),
    };
    remote::run(&api.api, api.user.as_deref(), what)
}
