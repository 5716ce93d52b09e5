//! `loadgen report`: result files side by side, with the first file's ratio to each other.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

/// A row: a label and a path of keys into the result.
const ROWS: &[(&str, &[&str])] = &[
    ("sockets connected", &["connected"]),
    ("errors", &["errors"]),
    ("publishes", &["publishes"]),
    ("deliveries expected", &["expected"]),
    ("deliveries received", &["delivered"]),
    ("lost", &["lost"]),
    ("duplicates", &["duplicates"]),
    ("throughput, deliveries/s", &["throughput_per_s"]),
    ("latency p50, ms", &["latency", "p50_ms"]),
    ("latency p90, ms", &["latency", "p90_ms"]),
    ("latency p99, ms", &["latency", "p99_ms"]),
    ("latency max, ms", &["latency", "max_ms"]),
    (
        "first delivery of a publish p50, ms",
        &["first_delivery_latency", "p50_ms"],
    ),
    (
        "first delivery of a publish p99, ms",
        &["first_delivery_latency", "p99_ms"],
    ),
    (
        "publish lag behind schedule p99, ms",
        &["publish_lag", "p99_ms"],
    ),
    ("server CPU, s", &["server_cpu_s"]),
    (
        "server CPU per delivery, us",
        &["server_cpu_us_per_delivery"],
    ),
    (
        "  of which node (--pid), us",
        &["server_cpu_us_per_delivery_by_process", "node"],
    ),
    (
        "  of which node2 (--pid2), us",
        &["server_cpu_us_per_delivery_by_process", "node2"],
    ),
    (
        "  of which redis-server, us",
        &["server_cpu_us_per_delivery_by_process", "redis"],
    ),
    (
        "loadgen CPU per delivery, us",
        &["loadgen_cpu_us_per_delivery"],
    ),
    ("connects/s", &["connect", "connects_per_s"]),
    ("connect latency p50, ms", &["connect", "latency", "p50_ms"]),
    ("connect latency p99, ms", &["connect", "latency", "p99_ms"]),
    ("server CPU per connect, ms", &["server_cpu_ms_per_connect"]),
    (
        "loadgen CPU per connect, ms",
        &["loadgen_cpu_ms_per_connect"],
    ),
    ("server RSS before, MiB", &["idle", "rss_before_bytes"]),
    ("server RSS held, MiB", &["idle", "rss_held_bytes"]),
    ("RSS per idle socket, KiB", &["rss_per_socket_bytes"]),
    (
        "RSS at 100k sockets (extrapolated), MiB",
        &["idle", "extrapolated_rss_100k_bytes"],
    ),
    (
        "server CPU while idle, s",
        &["idle", "server_cpu_s_during_hold"],
    ),
    ("server RSS at end, MiB", &["server_rss_bytes"]),
];

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn scaled(label: &str, x: f64) -> f64 {
    if label.contains("MiB") {
        x / (1024.0 * 1024.0)
    } else if label.contains("KiB") {
        x / 1024.0
    } else {
        x
    }
}

fn fmt(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e12 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Prints the table; fails when a file cannot be read.
pub(crate) fn print(files: &[PathBuf]) -> ExitCode {
    let mut results = Vec::new();
    for f in files {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => results.push(v),
            Err(e) => {
                eprintln!("loadgen report: {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(first) = results.first() else {
        eprintln!("loadgen report: no result files");
        return ExitCode::FAILURE;
    };
    let label = |v: &Value| v["server"].as_str().unwrap_or("?").to_owned();
    let mut header = vec![format!(
        "{} ({} sockets)",
        first["scenario"].as_str().unwrap_or("?"),
        first["sockets"]
    )];
    header.extend(results.iter().map(label));
    header.extend(
        results
            .iter()
            .skip(1)
            .map(|v| format!("{}/{}", label(first), label(v))),
    );
    let mut lines = vec![header];
    for (name, path) in ROWS {
        let vals: Vec<Option<f64>> = results
            .iter()
            .map(|r| {
                get(r, path)
                    .and_then(Value::as_f64)
                    .map(|x| scaled(name, x))
            })
            .collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let mut line = vec![(*name).to_owned()];
        line.extend(
            vals.iter()
                .map(|v| v.map(fmt).unwrap_or_else(|| "-".into())),
        );
        for v in vals.iter().skip(1) {
            line.push(match (vals[0], v) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            });
        }
        lines.push(line);
    }
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let dashes: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w.saturating_sub(1)))
                    }
                })
                .collect();
            println!("| {} |", dashes.join(" | "));
        }
    }
    for r in &results {
        if let Some(samples) = r["error_samples"].as_array().filter(|s| !s.is_empty()) {
            println!("errors from {}: {}", label(r), Value::from(samples.clone()));
        }
    }
    ExitCode::SUCCESS
}
