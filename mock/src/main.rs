//! `etlify-mock [--bind 127.0.0.1] [--port 0] [--token TOKEN] [--rate-limit MAX
//! [--rate-interval-ms MS]] [--verbose]`
//!
//! Prints `etlify-mock listening on http://HOST:PORT` once bound (so a parent process can
//! read the real port), then serves until SIGTERM/SIGINT and exits 0.

use etlify_mock::Config;
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: etlify-mock [--bind 127.0.0.1] [--port 0] [--token TOKEN] \
[--rate-limit MAX [--rate-interval-ms MS]] [--verbose]";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut config = Config::default();
    let mut rate_max = None;
    let mut rate_interval = 10_000u64;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--bind" => {
                let v = value("--bind")?;
                config.bind = v.parse().map_err(|_| format!("bad --bind address: {v}"))?;
            }
            "--port" => {
                let v = value("--port")?;
                config.port = v.parse().map_err(|_| format!("bad --port: {v}"))?;
            }
            "--token" => config.token = Some(value("--token")?),
            "--rate-limit" => {
                let v = value("--rate-limit")?;
                rate_max = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("bad --rate-limit: {v}"))?,
                );
            }
            "--rate-interval-ms" => {
                let v = value("--rate-interval-ms")?;
                rate_interval = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("bad --rate-interval-ms: {v}"))?;
            }
            "--verbose" | "-v" => config.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    config.rate_limit = rate_max.map(|max| (max, rate_interval));
    Ok(config)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("etlify-mock: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match etlify_mock::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etlify-mock: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind((config.bind, config.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "etlify-mock: cannot bind {}:{}: {e}",
                    config.bind, config.port
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("etlify-mock: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "etlify-mock listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        match etlify_mock::serve(listener, &config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("etlify-mock: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn parses_flags() {
        let c =
            parse("--port 8080 --token t --rate-limit 5 --rate-interval-ms=1000 --bind 0.0.0.0")
                .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.token.as_deref(), Some("t"));
        assert_eq!(c.rate_limit, Some((5, 1000)));
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(parse("").unwrap().rate_limit, None);
        assert!(parse("--port").is_err());
        assert!(parse("--nope").is_err());
    }
}
