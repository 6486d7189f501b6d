//! Container logs, one file per container instance in the kubelet's layout and the CRI
//! line format, rotated by size.
//!
//! `<log dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`, each line
//! `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>` (F: a full line, P: part of a
//! line longer than the read buffer or cut by the process exiting). When a file would grow
//! past `max_bytes` it becomes `<n>.log.1` (older ones shift to `.2`, ...; at most
//! `max_files` files are kept, the live one included), as the kubelet's
//! containerLogMaxSize / containerLogMaxFiles do.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};

/// Rotation limits.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for LogLimits {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

/// The directory of a pod's logs.
pub fn pod_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// The live log file of a container instance.
pub fn container_log(pod_dir: &Path, container: &str, restart_count: i32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart_count}.log"))
}

/// A log file that rotates itself.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<RotatingLog> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            limits,
            file,
            size,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.max_files.max(1) - 1;
        if keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(keep));
            for n in (1..keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Appends one CRI line.
    pub fn line(&mut self, stream: &str, text: &[u8], full: bool) -> io::Result<()> {
        let ts = k8s_openapi::jiff::Timestamp::now();
        let mut buf = Vec::with_capacity(text.len() + 48);
        write!(buf, "{ts:.9} {stream} {} ", if full { 'F' } else { 'P' })?;
        buf.extend_from_slice(text);
        buf.push(b'\n');
        if self.size > 0 && self.size + buf.len() as u64 > self.limits.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// Longest line piece written as one record (the kubelet's CRI reader uses 16 KiB).
const MAX_LINE: usize = 16 * 1024;

/// Copies a stream into the log until EOF.
pub async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: &'static str,
    log: Arc<Mutex<RotatingLog>>,
) {
    let mut r = BufReader::with_capacity(MAX_LINE, reader);
    loop {
        let mut buf = Vec::new();
        match (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let full = buf.last() == Some(&b'\n');
                if full {
                    buf.pop();
                }
                if let Ok(mut l) = log.lock() {
                    if let Err(e) = l.line(stream, &buf, full) {
                        tracing::warn!("writing container log: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cri_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_log(dir.path(), "c", 0);
        let log = Arc::new(Mutex::new(
            RotatingLog::open(
                &path,
                LogLimits {
                    max_bytes: 200,
                    max_files: 3,
                },
            )
            .unwrap(),
        ));
        let input: &[u8] = b"hello\nworld\nno newline";
        pump(input, "stdout", log.clone()).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[2].ends_with(" stdout P no newline"), "{}", lines[2]);
        assert!(lines[0].starts_with("20") && lines[0].contains('T'));
        for i in 0..40 {
            log.lock()
                .unwrap()
                .line("stderr", format!("line {i}").as_bytes(), true)
                .unwrap();
        }
        let mut r1 = path.clone().into_os_string();
        r1.push(".1");
        let mut r2 = path.clone().into_os_string();
        r2.push(".2");
        let mut r3 = path.clone().into_os_string();
        r3.push(".3");
        assert!(Path::new(&r1).exists() && Path::new(&r2).exists());
        assert!(!Path::new(&r3).exists(), "at most 3 files");
        for p in [path.as_os_str(), &r1, &r2] {
            assert!(std::fs::metadata(p).unwrap().len() <= 200);
        }
        assert!(std::fs::read_to_string(&path).unwrap().contains("line 39"));
    }
}
