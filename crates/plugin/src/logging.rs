//! Logs as hclog JSON lines on stderr (`{"@level":…,"@message":…,"@timestamp":…, fields}`):
//! go-plugin hosts parse these and re-log them at the right level; any other line would be
//! shown at debug level only. Filtered by `RUST_LOG` (default `info`).

use serde_json::{Map, Value};
use std::io::Write;
use std::time::SystemTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (a second call is a no-op).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(HclogLayer)
        .try_init();
}

/// Writes each event as one JSON line to stderr, in a single write so lines from several
/// threads never interleave.
pub struct HclogLayer;

impl<S: Subscriber> Layer<S> for HclogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);
        let line = format_line(
            *event.metadata().level(),
            &fields.message,
            fields.fields,
            SystemTime::now(),
        );
        // Nothing sensible to do when stderr is gone.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// hclog's level names (`warn`, not `warning`).
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// One line, newline-terminated. The timestamp has exactly six fractional digits: go-plugin
/// parses it with `2006-01-02T15:04:05.000000Z07:00` and treats the line as plain text if it
/// does not match.
pub fn format_line(
    level: Level,
    message: &str,
    fields: Map<String, Value>,
    now: SystemTime,
) -> String {
    let mut object = Map::new();
    object.insert("@level".into(), level_name(level).into());
    object.insert("@message".into(), message.into());
    object.insert(
        "@timestamp".into(),
        humantime::format_rfc3339_micros(now).to_string().into(),
    );
    for (key, value) in fields {
        object.entry(key).or_insert(value);
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Map<String, Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_hclog_json() {
        let mut fields = Map::new();
        fields.insert("cloud_id".into(), "shoes-vz-abc".into());
        fields.insert("@level".into(), "spoofed".into());
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = format_line(Level::WARN, "a \"quoted\" message", fields, now);
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let value: Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(value["@level"], "warn");
        assert_eq!(value["@message"], "a \"quoted\" message");
        assert_eq!(value["@timestamp"], "2023-11-14T22:13:20.123000Z");
        assert_eq!(value["cloud_id"], "shoes-vz-abc");
    }

    #[test]
    fn level_names_are_hclogs() {
        let names: Vec<_> = [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ]
        .into_iter()
        .map(level_name)
        .collect();
        assert_eq!(names, ["trace", "debug", "info", "warn", "error"]);
    }
}
