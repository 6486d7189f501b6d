//! Reading container logs back, for `kubectl logs` (the kubelet's `ReadLogs` over the CRI
//! log files [`crate::logs`] writes).
//!
//! Which instance a request reads follows the kubelet's `validateContainerLogStatus`
//! ([`select_instance`]); the files of an instance are read oldest first (`<n>.log.<k>` …
//! `<n>.log.1`, then `<n>.log`), records filtered by `sinceTime`/`sinceSeconds`, cut to the
//! last `tailLines` records, prefixed with their timestamp on request, and the output
//! stopped at `limitBytes`. Following keeps reading the live file, reopening it when it is
//! rotated (its inode changes), until the container has stopped and everything it wrote has
//! been sent.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{api::core::v1::ContainerStatus, jiff::Timestamp};

/// What a request asks for (the query of `/containerLogs/...`, upstream's PodLogOptions).
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub follow: bool,
    /// Only the last this many records.
    pub tail_lines: Option<u64>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// Prefix each record with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Which container instance's log to read, relative to the newest log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// The newest instance: the running one, or the one that ended last.
    Latest,
    /// The instance before the newest.
    BeforeLatest,
}

/// The kubelet's `validateContainerLogStatus`: which instance `previous` (or not) means
/// for a container in this state, or upstream's error. The newest file belongs to the
/// running container, or, while the container waits to restart, to the run that just
/// ended (its `lastState`), so `previous` of a waiting container is the newest file.
pub fn select_instance(
    pod: &str,
    status: &ContainerStatus,
    previous: bool,
) -> Result<Instance, String> {
    let name = &status.name;
    let state = status.state.clone().unwrap_or_default();
    let last_terminated = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.container_id.as_deref().is_some_and(|id| !id.is_empty()));
    if previous {
        return match last_terminated {
            None => Err(format!(
                "previous terminated container {name:?} in pod {pod:?} not found"
            )),
            Some(_) if state.waiting.is_some() => Ok(Instance::Latest),
            Some(_) => Ok(Instance::BeforeLatest),
        };
    }
    if state.running.is_some() || state.terminated.is_some() || last_terminated.is_some() {
        return Ok(Instance::Latest);
    }
    match state.waiting.and_then(|w| w.reason) {
        Some(r) if r == "ErrImagePull" => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: image can't be pulled"
        )),
        Some(r) if r == "ImagePullBackOff" => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: trying and failing to pull image"
        )),
        Some(r) => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: {r}"
        )),
        None => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start - no logs yet"
        )),
    }
}

/// The instance numbers (restart counts) that have a log file in a container's log
/// directory, ascending.
pub fn instances(container_dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(container_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<i32>()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// The live log file of `instance` in `container_dir`, or None when there is none yet.
pub fn instance_log(container_dir: &Path, instance: Instance) -> Option<PathBuf> {
    let all = instances(container_dir);
    let n = match instance {
        Instance::Latest => *all.last()?,
        Instance::BeforeLatest => *all.iter().rev().nth(1)?,
    };
    Some(container_dir.join(format!("{n}.log")))
}

/// The files of one instance, oldest first: rotated ones (`.k` … `.1`), then the live one.
fn files_of(live: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(base)) = (live.parent(), live.file_name().and_then(|f| f.to_str())) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(k) = name
                .strip_prefix(base)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|k| k.parse::<u32>().ok())
            {
                rotated.push((k, e.path()));
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut v: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    v.push(live.to_path_buf());
    v
}

/// One CRI record: `<RFC 3339 nano> <stream> <F|P> <text>`.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    time: Timestamp,
    full: bool,
    text: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let _stream = parts.next()?;
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        time,
        full,
        text: parts.next().unwrap_or_default(),
    })
}

/// Turns records into output bytes and enforces `limitBytes`.
struct Writer<'a, S: FnMut(&[u8]) -> bool> {
    opts: &'a ReadOptions,
    sink: S,
    written: u64,
    done: bool,
}

impl<S: FnMut(&[u8]) -> bool> Writer<'_, S> {
    /// Writes one record line (without its newline). False when the output is finished
    /// (limit reached or the reader went away).
    fn record(&mut self, line: &[u8]) -> bool {
        if self.done {
            return false;
        }
        let Some(r) = parse_record(line) else {
            // Not written by skiff (or cut): skipped, as the kubelet skips what it cannot
            // parse.
            return true;
        };
        if self.opts.since.is_some_and(|s| r.time < s) {
            return true;
        }
        let mut out = Vec::with_capacity(r.text.len() + 40);
        if self.opts.timestamps {
            out.extend_from_slice(format!("{} ", r.time).as_bytes());
        }
        out.extend_from_slice(r.text);
        if r.full {
            out.push(b'\n');
        }
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written);
            if (out.len() as u64) >= room {
                out.truncate(room as usize);
                self.done = true;
            }
        }
        self.written += out.len() as u64;
        if !out.is_empty() && !(self.sink)(&out) {
            self.done = true;
        }
        !self.done
    }
}

/// Calls `f` with every complete line of `buf` (without the newline) and keeps the
/// incomplete rest in `buf`. False when `f` asked to stop.
fn drain_lines(buf: &mut Vec<u8>, mut f: impl FnMut(&[u8]) -> bool) -> bool {
    let mut start = 0;
    let mut go = true;
    while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
        if go {
            go = f(&buf[start..start + i]);
        }
        start += i + 1;
    }
    buf.drain(..start);
    go
}

/// How often a followed file is checked for new data, rotation and the container's end.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Reads the instance whose live log file is `live` into `sink` (false from the sink stops
/// reading: the client went away). With `follow`, keeps reading until `running()` says the
/// container has stopped and the file has been read to its end.
pub fn read(
    live: &Path,
    opts: &ReadOptions,
    sink: impl FnMut(&[u8]) -> bool,
    running: impl Fn() -> bool,
) -> io::Result<()> {
    let mut w = Writer {
        opts,
        sink,
        written: 0,
        done: false,
    };
    let files = files_of(live);
    let mut tail: Option<VecDeque<Vec<u8>>> = opts.tail_lines.map(|_| VecDeque::new());
    let keep = opts.tail_lines.unwrap_or(0) as usize;
    let mut live_file: Option<(File, u64)> = None;
    let mut rest = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let mut f = match File::open(path) {
            Ok(f) => f,
            // Rotated away meanwhile, or the live file of a container not started yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let go = drain_lines(&mut buf, |line| match &mut tail {
            Some(t) => {
                if keep > 0
                    && opts
                        .since
                        .is_none_or(|s| parse_record(line).is_some_and(|r| r.time >= s))
                {
                    if t.len() == keep {
                        t.pop_front();
                    }
                    t.push_back(line.to_vec());
                }
                true
            }
            None => w.record(line),
        });
        if !go {
            return Ok(());
        }
        if i + 1 == files.len() {
            let ino = f.metadata()?.ino();
            live_file = Some((f, ino));
            rest = buf;
        }
    }
    if let Some(t) = tail {
        for line in t {
            if !w.record(&line) {
                return Ok(());
            }
        }
    }
    if !opts.follow {
        return Ok(());
    }
    let mut stopped_seen = false;
    loop {
        let mut grew = false;
        if let Some((f, _)) = &mut live_file {
            let n = f.read_to_end(&mut rest)?;
            grew = n > 0;
            if !drain_lines(&mut rest, |line| w.record(line)) {
                return Ok(());
            }
        }
        if grew {
            continue;
        }
        // Rotated (or created, for a container that had not written yet): the old file
        // has been read to its end above; continue with the new one from its start.
        if let Ok(meta) = std::fs::metadata(live) {
            if live_file.as_ref().is_none_or(|(_, ino)| *ino != meta.ino()) {
                // What the writer appended between the read above and its rename.
                if let Some((f, _)) = &mut live_file {
                    f.read_to_end(&mut rest)?;
                    if !drain_lines(&mut rest, |line| w.record(line)) {
                        return Ok(());
                    }
                }
                if let Ok(f) = File::open(live) {
                    live_file = Some((f, meta.ino()));
                    rest.clear();
                    continue;
                }
            }
        }
        // The container stopped: one more pass picks up what it wrote just before.
        if !running() {
            if stopped_seen {
                return Ok(());
            }
            stopped_seen = true;
            continue;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    fn status(state: ContainerState, last: Option<ContainerStateTerminated>) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            state: Some(state),
            last_state: Some(ContainerState {
                terminated: last,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated() -> ContainerStateTerminated {
        ContainerStateTerminated {
            container_id: Some("skiff://u/app/1".into()),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn instance_selection_follows_the_kubelet() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        };
        assert_eq!(
            select_instance("p", &status(running.clone(), None), false),
            Ok(Instance::Latest)
        );
        assert_eq!(
            select_instance("p", &status(running.clone(), None), true),
            Err(r#"previous terminated container "app" in pod "p" not found"#.into())
        );
        assert_eq!(
            select_instance("p", &status(running, Some(terminated())), true),
            Ok(Instance::BeforeLatest)
        );
        let crash = status(waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(select_instance("p", &crash, false), Ok(Instance::Latest));
        assert_eq!(select_instance("p", &crash, true), Ok(Instance::Latest));
        assert_eq!(
            select_instance("p", &status(waiting("ContainerCreating"), None), false),
            Err(r#"container "app" in pod "p" is waiting to start: ContainerCreating"#.into())
        );
        assert_eq!(
            select_instance("p", &status(waiting("ErrImagePull"), None), false),
            Err(r#"container "app" in pod "p" is waiting to start: image can't be pulled"#.into())
        );
    }

    fn write(path: &Path, lines: &[(&str, &str, &str)]) {
        let mut s = String::new();
        for (t, tag, text) in lines {
            s.push_str(&format!("{t} stdout {tag} {text}\n"));
        }
        std::fs::write(path, s).unwrap();
    }

    fn collect(live: &Path, opts: &ReadOptions) -> String {
        let mut out = Vec::new();
        read(
            live,
            opts,
            |b| {
                out.extend_from_slice(b);
                true
            },
            || false,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rotated_files_tail_since_timestamps_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("app");
        std::fs::create_dir_all(&c).unwrap();
        write(
            &c.join("0.log"),
            &[("2026-01-01T00:00:00.000000001Z", "F", "old instance")],
        );
        write(
            &c.join("1.log.2"),
            &[("2026-01-01T00:00:01.000000000Z", "F", "one")],
        );
        write(
            &c.join("1.log.1"),
            &[
                ("2026-01-01T00:00:02.000000000Z", "P", "tw"),
                ("2026-01-01T00:00:02.500000000Z", "F", "o"),
            ],
        );
        write(
            &c.join("1.log"),
            &[
                ("2026-01-01T00:00:03.000000000Z", "F", "three"),
                ("2026-01-01T00:00:04.000000000Z", "F", ""),
            ],
        );
        assert_eq!(instances(&c), vec![0, 1]);
        let live = instance_log(&c, Instance::Latest).unwrap();
        assert_eq!(live, c.join("1.log"));
        assert_eq!(
            instance_log(&c, Instance::BeforeLatest).unwrap(),
            c.join("0.log")
        );
        let all = ReadOptions::default();
        assert_eq!(collect(&live, &all), "one\ntwo\nthree\n\n");
        let tail = ReadOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(collect(&live, &tail), "three\n\n");
        let none = ReadOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert_eq!(collect(&live, &none), "");
        let since = ReadOptions {
            since: Some("2026-01-01T00:00:02.5Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(&live, &since), "o\nthree\n\n");
        let ts = ReadOptions {
            timestamps: true,
            tail_lines: Some(1),
            since: Some("2026-01-01T00:00:03Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(&live, &ts), "2026-01-01T00:00:04Z \n");
        let limit = ReadOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(collect(&live, &limit), "one\ntw");
    }

    #[test]
    fn follow_reads_across_rotation_until_the_container_stops() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        write(&live, &[("2026-01-01T00:00:00Z", "F", "a")]);
        let running = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = {
            let live = live.clone();
            let running = running.clone();
            std::thread::spawn(move || {
                let opts = ReadOptions {
                    follow: true,
                    ..Default::default()
                };
                read(
                    &live,
                    &opts,
                    |b| tx.send(b.to_vec()).is_ok(),
                    || running.load(Ordering::SeqCst),
                )
                .unwrap();
            })
        };
        let recv = || String::from_utf8(rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
        assert_eq!(recv(), "a\n");
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        f.write_all(b"2026-01-01T00:00:01Z stdout F b\n").unwrap();
        assert_eq!(recv(), "b\n");
        // Rotation: the live file is renamed and a new one starts.
        f.write_all(b"2026-01-01T00:00:02Z stdout F c\n").unwrap();
        std::fs::rename(&live, dir.path().join("0.log.1")).unwrap();
        write(&live, &[("2026-01-01T00:00:03Z", "F", "d")]);
        assert_eq!(recv(), "c\n");
        assert_eq!(recv(), "d\n");
        running.store(false, Ordering::SeqCst);
        reader.join().unwrap();
    }
}
