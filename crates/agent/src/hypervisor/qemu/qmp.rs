//! A small QMP client: one JSON object per line over QEMU's control socket. Connecting reads
//! the greeting and negotiates capabilities; events arriving between replies are skipped.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path} within {after:?}")]
    Connect {
        path: PathBuf,
        after: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection failed")]
    Io(#[from] std::io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("QEMU did not answer {command} within {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One line from QEMU, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting,
    Return(Value),
    Error { class: String, desc: String },
    Event(String),
}

pub fn parse_message(line: &str) -> Result<Message, QmpError> {
    let value: Value =
        serde_json::from_str(line).map_err(|_| QmpError::Protocol(truncate(line)))?;
    if value.get("QMP").is_some() {
        return Ok(Message::Greeting);
    }
    if let Some(ret) = value.get("return") {
        return Ok(Message::Return(ret.clone()));
    }
    if let Some(error) = value.get("error") {
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return Ok(Message::Error {
            class: text("class"),
            desc: text("desc"),
        });
    }
    if let Some(event) = value.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(event.to_string()));
    }
    Err(QmpError::Protocol(truncate(line)))
}

fn truncate(line: &str) -> String {
    line.chars().take(200).collect()
}

pub struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities.
    /// `timeout` bounds the connection and, afterwards, every single command.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(source) if started.elapsed() >= timeout => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        after: timeout,
                        source,
                    })
                }
                // QEMU makes the socket early in its start; a short poll finds it sooner.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(read).lines(),
            writer,
            timeout,
        };
        match qmp.next_message("greeting").await? {
            Message::Greeting => {}
            other => {
                return Err(QmpError::Protocol(format!(
                    "expected a greeting, got {other:?}"
                )))
            }
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            match self.next_message(command).await? {
                Message::Return(value) => return Ok(value),
                Message::Error { class, desc } => {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class,
                        desc,
                    })
                }
                Message::Event(_) | Message::Greeting => continue,
            }
        }
    }

    /// Runs a human monitor (HMP) command, for what QMP does not offer (`info usernet`).
    pub async fn human(&mut self, command_line: &str) -> Result<String, QmpError> {
        let value = self
            .execute(
                "human-monitor-command",
                Some(json!({ "command-line": command_line })),
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, …).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status", None).await?;
        Ok(value
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    async fn next_message(&mut self, waiting_for: &str) -> Result<Message, QmpError> {
        let line = tokio::time::timeout(self.timeout, self.lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout {
                command: waiting_for.to_string(),
                after: self.timeout,
            })??
            .ok_or(QmpError::Closed)?;
        parse_message(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    #[test]
    fn classifies_qemu_messages() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            parse_message(greeting).expect("greeting"),
            Message::Greeting
        );
        assert_eq!(
            parse_message(r#"{"return": {"status": "running", "running": true}}"#).expect("return"),
            Message::Return(json!({"status": "running", "running": true}))
        );
        assert_eq!(
            parse_message(r#"{"error": {"class": "GenericError", "desc": "no such device"}}"#)
                .expect("error"),
            Message::Error {
                class: "GenericError".into(),
                desc: "no such device".into()
            }
        );
        assert_eq!(
            parse_message(
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#
            )
            .expect("event"),
            Message::Event("POWERDOWN".into())
        );
        assert!(matches!(
            parse_message("garbage"),
            Err(QmpError::Protocol(_))
        ));
        assert!(matches!(parse_message("{}"), Err(QmpError::Protocol(_))));
    }

    /// A scripted QEMU: greeting, capabilities, an event before a reply, an error.
    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut received = Vec::new();
            stream
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .await
                .expect("greet");
            let mut buf = [0u8; 4096];
            for reply in [
                "{\"return\": {}}\r\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\r\n{\"return\": \"usernet text\"}\r\n",
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\r\n",
            ] {
                let n = stream.read(&mut buf).await.expect("read");
                received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                stream.write_all(reply.as_bytes()).await.expect("reply");
            }
            received
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        let text = qmp.human("info usernet").await.expect("human");
        assert_eq!(text, "usernet text");
        let error = qmp.execute("bogus", None).await.expect_err("error");
        assert!(matches!(error, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
        let received = server.await.expect("server");
        assert!(received[0].contains("qmp_capabilities"));
        assert!(received[1].contains("\"command-line\":\"info usernet\""));
        drop(qmp);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(100))
            .await
            .err()
            .expect("no socket");
        assert!(matches!(error, QmpError::Connect { .. }));
    }
}
