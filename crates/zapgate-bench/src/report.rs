//! Results as a Markdown table (stdout) and JSON (`bench/results/<date>-<mode>.json`).

use crate::scenarios::Settings;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The ceiling this figure is compared with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Further ceilings this figure is compared with (the first is `ceiling`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Ratio>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub ceiling: String,
    pub ratio: f64,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self { name: name.into(), value, unit, ceiling: None, ratio: None, also: Vec::new(), note: String::new() }
    }
    /// Compares with `ceiling`; called again, adds a further comparison.
    pub fn against(mut self, ceiling: &Figure) -> Self {
        let ratio = (ceiling.value > 0.0).then(|| self.value / ceiling.value);
        if self.ceiling.is_none() {
            self.ceiling = Some(ceiling.name.clone());
            self.ratio = ratio;
        } else if let Some(ratio) = ratio {
            self.also.push(Ratio { ceiling: ceiling.name.clone(), ratio });
        }
        self
    }
    pub fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }
}

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub mode: &'static str,
    pub quick: bool,
    pub machine: Machine,
    pub settings: serde_json::Value,
    /// Versions of the services measured (distributed mode: PostgreSQL, Redis).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub versions: serde_json::Map<String, serde_json::Value>,
    pub figures: Vec<Figure>,
}

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub zapgate_version: &'static str,
}

impl Report {
    /// `extra` settings (an object) are added to the common ones.
    pub fn new(
        mode: &'static str,
        s: &Settings,
        extra: serde_json::Value,
        versions: serde_json::Map<String, serde_json::Value>,
        figures: Vec<Figure>,
    ) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Report {
            date: now_date(),
            mode,
            quick: s.quick,
            machine: Machine {
                cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                memory_kib,
                kernel,
                zapgate_version: env!("CARGO_PKG_VERSION"),
            },
            settings: {
                let mut settings = serde_json::json!({
                    "phase_seconds": s.phase.as_secs_f64(),
                    "connections": s.connections,
                    "zapgate": s.zapgate.display().to_string(),
                });
                if !s.env.is_empty() {
                    settings["zapgate_env"] = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                }
                if let (Some(settings), serde_json::Value::Object(extra)) = (settings.as_object_mut(), extra) {
                    settings.extend(extra);
                }
                settings
            },
            versions,
            figures,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## zapgate-bench — {} mode, {}{}\n\n{} cores, {} MiB, kernel {}{}\n\n| figure | value | ceiling | ratio | note |\n|---|---:|---|---:|---|\n",
            self.mode,
            self.date,
            if self.quick { " (quick: not meaningful)" } else { "" },
            self.machine.cores,
            self.machine.memory_kib / 1024,
            self.machine.kernel,
            self.versions.iter().map(|(k, v)| format!(", {k} {}", v.as_str().unwrap_or_default())).collect::<String>()
        );
        for f in &self.figures {
            let ratio = f.ratio.map(fmt_ratio).unwrap_or_default();
            out += &format!(
                "| {} | {} {} | {} | {} | {} |\n",
                f.name,
                fmt_value(f.value),
                f.unit,
                f.ceiling.as_deref().unwrap_or(""),
                ratio,
                f.note
            );
            for also in &f.also {
                out += &format!("| ↳ the same | | {} | {} | |\n", also.ceiling, fmt_ratio(also.ratio));
            }
        }
        out
    }

    pub fn write_json(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}-{}.json", self.date, self.mode));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r < 0.1 { format!("{:.1} %", r * 100.0) } else { format!("{:.0} %", r * 100.0) }
}

fn now_date() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}
