//! The doctor table: what `agentcage doctor -o json` said in each boot, one column per boot,
//! as Markdown for docs/KERNEL.md (so the table there is what the boots showed).

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

/// One boot's doctor report.
pub struct Column {
    pub boot: String,
    pub report: Value,
}

impl Column {
    /// Parses the step's output (the JSON report, possibly after lines of other output).
    pub fn parse(boot: &str, lines: &[String]) -> Result<Self> {
        let start = lines
            .iter()
            .position(|l| l.starts_with('{'))
            .with_context(|| format!("vm({boot}): doctor printed no JSON report"))?;
        let report = serde_json::from_str(&lines[start..].join("\n"))
            .with_context(|| format!("vm({boot}): doctor's report is not JSON"))?;
        Ok(Self {
            boot: boot.to_owned(),
            report,
        })
    }

    fn text(&self, key: &str) -> String {
        match &self.report[key] {
            Value::String(s) => s.clone(),
            Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            Value::Null => "?".to_owned(),
            v => v.to_string(),
        }
    }

    /// The state of `hook` (e.g. `lsm/file_open`) without its explanation in brackets.
    fn hook(&self, hook: &str) -> String {
        self.report["hooks"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["hook"] == hook))
            .and_then(|h| h["state"].as_str())
            .map_or("?".to_owned(), |s| {
                s.split(" (").next().unwrap_or(s).trim().to_owned()
            })
    }

    fn refused(&self) -> String {
        let features: Vec<&str> = self.report["refused"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["feature"].as_str()).collect())
            .unwrap_or_default();
        if features.is_empty() {
            "nothing".to_owned()
        } else {
            features.join(", ")
        }
    }
}

/// The Markdown table of `columns`: the kernel's facts, the tier, what is refused, then
/// every hook's state, in the order the first report lists them.
pub fn markdown(columns: &[Column]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "kernel".into(),
            columns.iter().map(|c| c.text("kernel")).collect(),
        ),
        (
            "active LSMs".into(),
            columns.iter().map(|c| c.text("active_lsms")).collect(),
        ),
        (
            "BPF memory".into(),
            columns.iter().map(|c| c.text("bpf_memory")).collect(),
        ),
        (
            "cgroup.kill".into(),
            columns.iter().map(|c| c.text("cgroup_kill")).collect(),
        ),
        (
            "tier (daemon)".into(),
            columns.iter().map(|c| c.text("daemon_tier")).collect(),
        ),
        (
            "refused".into(),
            columns.iter().map(Column::refused).collect(),
        ),
    ];
    let hooks: Vec<String> = columns
        .first()
        .and_then(|c| c.report["hooks"].as_array())
        .map(|hs| {
            hs.iter()
                .filter_map(|h| h["hook"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for h in hooks {
        let states = columns.iter().map(|c| c.hook(&h)).collect();
        rows.push((format!("`{h}`"), states));
    }
    let mut s = String::from("| |");
    for c in columns {
        write!(s, " {} |", c.boot).unwrap();
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(columns.len()));
    s.push('\n');
    for (name, cells) in rows {
        write!(s, "| {name} |").unwrap();
        for cell in cells {
            write!(s, " {} |", cell.replace('|', "\\|")).unwrap();
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{markdown, Column};

    #[test]
    fn one_column_per_boot_one_row_per_hook() {
        let deny = r#"{"kernel":"5.10.0-32-cloud-amd64","active_lsms":["capability","bpf"],
            "bpf_memory":"charged to RLIMIT_MEMLOCK","cgroup_kill":false,"daemon_tier":"deny",
            "refused":[{"feature":"file_rules","why":"no userns_create"}],
            "hooks":[{"hook":"lsm/userns_create","state":"not loaded: no such hook (6.1+)"}]}"#;
        let kill = r#"{"kernel":"6.1.0-50-cloud-amd64","active_lsms":["capability"],
            "bpf_memory":"charged to the memory cgroup","cgroup_kill":true,"daemon_tier":"kill",
            "refused":[],"hooks":[{"hook":"lsm/userns_create","state":"attached"}]}"#;
        let lines = |j: &str| -> Vec<String> {
            std::iter::once("some noise".to_owned())
                .chain(j.lines().map(str::to_owned))
                .collect()
        };
        let cols = [
            Column::parse("5.10/deny", &lines(deny)).unwrap(),
            Column::parse("6.1/kill", &lines(kill)).unwrap(),
        ];
        let t = markdown(&cols);
        assert!(
            t.starts_with("| | 5.10/deny | 6.1/kill |\n|---|---|---|\n"),
            "{t}"
        );
        assert!(
            t.contains("| active LSMs | capability,bpf | capability |"),
            "{t}"
        );
        assert!(t.contains("| cgroup.kill | no | yes |"), "{t}");
        assert!(t.contains("| refused | file_rules | nothing |"), "{t}");
        assert!(
            t.contains("| `lsm/userns_create` | not loaded: no such hook | attached |"),
            "{t}"
        );
        assert!(Column::parse("x", &["no json".to_owned()]).is_err());
    }
}
