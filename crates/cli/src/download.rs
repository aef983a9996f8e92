//! Resume-safe downloads of large files (macOS restore images, ~15 GB) with HTTP Range
//! requests: bytes go to `<dest>.partial`, a later run continues where the last one stopped,
//! and only a complete file is renamed to `dest`. Plain Rust (reqwest), tested against a local
//! HTTP server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A download stalls if no byte arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot download {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}; check the URL or try again later")]
    Status { url: String, status: u16 },
    #[error(
        "{url} sent {got} bytes where {expected} were announced; run the command again to resume"
    )]
    Short {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the unfinished bytes of `dest` are kept between runs.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// A file name for `url`'s last path segment (letters, digits, '.', '-', '_'), or `fallback`.
pub fn file_name_for(url: &str, fallback: &str) -> String {
    let last = url
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let clean: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        fallback.to_string()
    } else {
        clean
    }
}

/// Downloads `url` to `dest` (a no-op when `dest` exists), resuming `<dest>.partial`.
/// `progress(done, total)` follows the bytes (`total` is `None` when the server does not say).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<PathBuf, DownloadError> {
    if dest.is_file() {
        return Ok(dest.to_path_buf());
    }
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io {
            action,
            path,
            source,
        }
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let partial = partial_path(dest);
    let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
    let http = |source| DownloadError::Http {
        url: url.to_string(),
        source,
    };
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().await.map_err(http)?;
    let status = response.status().as_u16();
    let (start, total) = match status {
        // Resumed: the server sends the rest.
        206 if have > 0 => (have, response.content_length().map(|rest| have + rest)),
        // A fresh start (or a server that ignores Range: start over).
        200 => (0, response.content_length()),
        // Nothing left to send: the partial file is the whole file.
        416 if have > 0 => {
            std::fs::rename(&partial, dest).map_err(io("rename", &partial))?;
            progress(have, Some(have));
            return Ok(dest.to_path_buf());
        }
        _ => {
            return Err(DownloadError::Status {
                url: url.to_string(),
                status,
            })
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(start == 0)
        .append(start > 0)
        .open(&partial)
        .map_err(io("open", &partial))?;
    let mut done = start;
    progress(done, total);
    loop {
        let chunk = tokio::time::timeout(STALL_TIMEOUT, response.chunk())
            .await
            .map_err(|_| DownloadError::Short {
                url: url.to_string(),
                got: done,
                expected: total.unwrap_or(done),
            })?
            .map_err(http)?;
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk).map_err(io("write", &partial))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    file.sync_all().map_err(io("sync", &partial))?;
    if let Some(expected) = total {
        if done != expected {
            return Err(DownloadError::Short {
                url: url.to_string(),
                got: done,
                expected,
            });
        }
    }
    std::fs::rename(&partial, dest).map_err(io("rename", &partial))?;
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};

    fn payload() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    /// Serves `payload()` at /restore.ipsw with Range support, recording the Range headers.
    async fn server(ranges: Arc<Mutex<Vec<Option<String>>>>) -> String {
        let handler = move |headers: HeaderMap| {
            let ranges = Arc::clone(&ranges);
            async move {
                let data = payload();
                let range = headers
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                ranges.lock().expect("lock").push(range.clone());
                match range.and_then(|r| {
                    r.strip_prefix("bytes=")?
                        .strip_suffix('-')?
                        .parse::<usize>()
                        .ok()
                }) {
                    Some(start) if start >= data.len() => (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [("content-range", format!("bytes */{}", data.len()))],
                        Vec::new(),
                    )
                        .into_response(),
                    Some(start) => (
                        StatusCode::PARTIAL_CONTENT,
                        [(
                            "content-range",
                            format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
                        )],
                        data[start..].to_vec(),
                    )
                        .into_response(),
                    None => data.into_response(),
                }
            }
        };
        let router = axum::Router::new()
            .route("/restore.ipsw", axum::routing::get(handler))
            .route(
                "/missing.ipsw",
                axum::routing::get(|| async { StatusCode::NOT_FOUND }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn a_fresh_download_lands_whole_with_progress() {
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let base = server(Arc::clone(&ranges)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("ipsw").join("restore.ipsw");
        let mut seen = Vec::new();
        let path = download(
            &client(),
            &format!("{base}/restore.ipsw"),
            &dest,
            |done, total| seen.push((done, total)),
        )
        .await
        .expect("downloaded");
        assert_eq!(std::fs::read(&path).expect("read"), payload());
        assert!(!partial_path(&dest).exists());
        assert_eq!(seen.last(), Some(&(200_000, Some(200_000))));
        assert_eq!(ranges.lock().expect("lock").as_slice(), [None]);
        // Already there: nothing is fetched again.
        download(&client(), &format!("{base}/restore.ipsw"), &dest, |_, _| {})
            .await
            .expect("present");
        assert_eq!(ranges.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn an_interrupted_download_resumes_from_its_partial_file() {
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let base = server(Arc::clone(&ranges)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("restore.ipsw");
        // What an interrupted run left behind.
        std::fs::write(partial_path(&dest), &payload()[..70_000]).expect("partial");
        let mut first = None;
        download(
            &client(),
            &format!("{base}/restore.ipsw"),
            &dest,
            |done, total| {
                first.get_or_insert((done, total));
            },
        )
        .await
        .expect("resumed");
        assert_eq!(std::fs::read(&dest).expect("read"), payload());
        assert_eq!(
            ranges.lock().expect("lock").as_slice(),
            [Some("bytes=70000-".to_string())]
        );
        assert_eq!(
            first,
            Some((70_000, Some(200_000))),
            "progress starts where it was"
        );

        // A partial file that is already whole: the server says 416, the file is kept.
        let dest = dir.path().join("whole.ipsw");
        std::fs::write(partial_path(&dest), payload()).expect("partial");
        download(&client(), &format!("{base}/restore.ipsw"), &dest, |_, _| {})
            .await
            .expect("complete");
        assert_eq!(std::fs::read(&dest).expect("read"), payload());
    }

    #[tokio::test]
    async fn an_error_status_says_so_and_leaves_nothing() {
        let base = server(Arc::new(Mutex::new(Vec::new()))).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("missing.ipsw");
        let error = download(&client(), &format!("{base}/missing.ipsw"), &dest, |_, _| {})
            .await
            .expect_err("404");
        assert!(
            matches!(error, DownloadError::Status { status: 404, .. }),
            "{error}"
        );
        assert!(!dest.exists() && !partial_path(&dest).exists());
    }

    #[test]
    fn file_names_come_from_the_url() {
        assert_eq!(
            file_name_for(
                "https://updates.cdn-apple.com/x/UniversalMac_26.1_25B78_Restore.ipsw?a=b",
                "latest.ipsw"
            ),
            "UniversalMac_26.1_25B78_Restore.ipsw"
        );
        assert_eq!(file_name_for("https://h/", "latest.ipsw"), "latest.ipsw");
        assert_eq!(file_name_for("https://h/..", "latest.ipsw"), "latest.ipsw");
    }
}
