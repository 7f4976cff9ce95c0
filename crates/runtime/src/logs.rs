//! Docker-compatible `json-file` container logs.
//!
//! Each line of `json.log` is one JSON object:
//! `{"log":"<text, with its trailing \n>","stream":"stdout"|"stderr","time":"<RFC3339Nano UTC>"}`.
//! A line longer than [`MAX_PARTIAL`] bytes is split into several records; all but the last have no
//! trailing newline (Docker's "partial" messages). The file is rotated by size: `json.log` →
//! `json.log.1` → … → `json.log.<max_files-1>`.
//!
//! [`LogWriter`] is synchronous (the shim uses it from plain threads); [`read_logs`] is async and can
//! follow a log while the container runs.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The largest record [`LogWriter`] writes without a newline: longer lines are cut into pieces of
/// this size (like Docker's 16 KiB partial messages).
pub const MAX_PARTIAL: usize = 16 * 1024;

/// How often a following reader looks for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Errors from writing or reading json-file logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log file could not be opened, written, renamed or read.
    #[error(
        "log file {path}: {source} (check that the container directory exists and is writable)"
    )]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A log record could not be encoded.
    #[error("cannot encode a log record: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which output stream of the container a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl LogStream {
    /// `"stdout"` or `"stderr"`, as written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }
}

/// Formats a time as Docker's RFC3339Nano in UTC (`2024-05-01T10:00:00.123456789Z`).
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// The path of rotated file number `n` (`json.log.<n>`); `n == 0` is the live file.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[derive(Serialize)]
struct RecordOut<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

#[derive(Deserialize)]
struct RecordIn {
    log: String,
    stream: LogStream,
    time: String,
}

/// Writes json-file logs with size-based rotation. Not thread-safe by itself: share it behind a
/// `Mutex` when several threads write.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending to) the log at `path`. `max_size` is the size in bytes at which the file
    /// is rotated (0: never); `max_files` is the total number of files kept, the live one included
    /// (0 is treated as 1: the file is truncated when it is full).
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> Result<Self, LogError> {
        let file = open_append(path)?;
        let size = file.metadata().map_err(io_err(path))?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Feeds `bytes` read from `stream` (any chunk, not necessarily a whole line). Every complete
    /// line becomes one record; the rest is kept until its newline arrives, or written as a partial
    /// record once [`MAX_PARTIAL`] bytes have accumulated.
    pub fn write_line(&mut self, stream: LogStream, bytes: &[u8]) -> Result<(), LogError> {
        let mut buf = std::mem::take(&mut self.partial[stream.index()]);
        buf.extend_from_slice(bytes);
        let now = format_time(OffsetDateTime::now_utc());
        let mut start = 0;
        let mut result = Ok(());
        while start < buf.len() {
            let rest = &buf[start..];
            let end = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i < MAX_PARTIAL => i + 1,
                _ if rest.len() >= MAX_PARTIAL => MAX_PARTIAL,
                _ => break,
            };
            if let Err(e) = self.emit(stream, &rest[..end], &now) {
                result = Err(e);
                start = buf.len();
                break;
            }
            start += end;
        }
        buf.drain(..start);
        self.partial[stream.index()] = buf;
        result
    }

    /// Writes whatever is buffered for `stream` as a final partial record (call at end of stream).
    pub fn flush_partial(&mut self, stream: LogStream) -> Result<(), LogError> {
        let buf = std::mem::take(&mut self.partial[stream.index()]);
        if buf.is_empty() {
            return Ok(());
        }
        let now = format_time(OffsetDateTime::now_utc());
        self.emit(stream, &buf, &now)
    }

    /// Flushes the partial lines of both streams.
    pub fn flush_all(&mut self) -> Result<(), LogError> {
        self.flush_partial(LogStream::Stdout)?;
        self.flush_partial(LogStream::Stderr)
    }

    fn emit(&mut self, stream: LogStream, bytes: &[u8], time: &str) -> Result<(), LogError> {
        let text = String::from_utf8_lossy(bytes);
        let mut line = serde_json::to_vec(&RecordOut {
            log: &text,
            stream: stream.as_str(),
            time,
        })?;
        line.push(b'\n');
        if self.max_size > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        if self.max_files <= 1 {
            self.file.set_len(0).map_err(io_err(&self.path))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files - 1).rev() {
            let from = rotated_path(&self.path, n);
            match std::fs::rename(&from, rotated_path(&self.path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&from)(e)),
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1)).map_err(io_err(&self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

/// What [`read_logs`] returns.
#[derive(Debug, Clone, Default)]
pub struct LogReadOptions {
    /// Keep reading new records until the `stop` future resolves.
    pub follow: bool,
    /// Only the last N records written so far (then new ones when following).
    pub tail: Option<usize>,
    /// Only records written at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Prefix each line with its RFC3339Nano time and a space (like `docker logs -t`).
    pub timestamps: bool,
}

/// One record read back from a json-file log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The stream it was written to.
    pub stream: LogStream,
    /// When the shim read it.
    pub time: OffsetDateTime,
    /// The bytes, with the trailing newline unless it was a partial record; prefixed with the
    /// time when [`LogReadOptions::timestamps`] is set.
    pub line: Vec<u8>,
}

/// Reads the json-file log at `path` (rotated files oldest first, then the live file). With
/// `follow`, keeps polling for new records (surviving rotation) until `stop` resolves — typically
/// when the container has exited — then reads what is left and ends. Malformed lines are skipped.
/// A missing log is an empty log. Needs a tokio runtime; the reading runs on a blocking thread and
/// ends when the returned stream is dropped.
pub async fn read_logs<F>(
    path: impl Into<PathBuf>,
    opts: LogReadOptions,
    stop: F,
) -> impl Stream<Item = Result<LogEntry, LogError>> + Send + 'static
where
    F: Future + Send + 'static,
{
    let path = path.into();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let stopped = Arc::new(AtomicBool::new(false));
    if opts.follow {
        let stopped = stopped.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => stopped.store(true, Ordering::SeqCst),
                _ = tx.closed() => {}
            }
        });
    }
    tokio::task::spawn_blocking(move || {
        let mut reader = Reader {
            opts,
            tx,
            stopped,
            tail: VecDeque::new(),
            in_tail: true,
        };
        if let Err(e) = reader.run(&path) {
            let _ = reader.tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The current file of a reader and the bytes of a line not yet complete.
struct Open {
    file: File,
    ino: u64,
    pending: Vec<u8>,
}

struct Reader {
    opts: LogReadOptions,
    tx: tokio::sync::mpsc::Sender<Result<LogEntry, LogError>>,
    stopped: Arc<AtomicBool>,
    tail: VecDeque<LogEntry>,
    in_tail: bool,
}

/// The reader's consumer went away.
struct Gone;

impl Reader {
    fn run(&mut self, path: &Path) -> Result<(), LogError> {
        // Old files, oldest (highest number) first.
        let mut old = Vec::new();
        let mut n = 1;
        loop {
            let p = rotated_path(path, n);
            if !p.exists() {
                break;
            }
            old.push(p);
            n += 1;
        }
        for p in old.iter().rev() {
            let file = match File::open(p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(p)(e)),
            };
            let mut open = Open {
                ino: 0,
                file,
                pending: Vec::new(),
            };
            if self.drain(&mut open, p)?.is_err() {
                return Ok(());
            }
        }
        let mut current = open_live(path)?;
        if let Some(open) = current.as_mut() {
            if self.drain(open, path)?.is_err() {
                return Ok(());
            }
        }
        self.in_tail = false;
        for entry in std::mem::take(&mut self.tail) {
            if self.tx.blocking_send(Ok(entry)).is_err() {
                return Ok(());
            }
        }
        if !self.opts.follow {
            return Ok(());
        }
        loop {
            let stopping = self.stopped.load(Ordering::SeqCst);
            if let Some(open) = current.as_mut() {
                if self.drain(open, path)?.is_err() {
                    return Ok(());
                }
            }
            // Rotated (or created) since we opened it? Finish the old file, then switch.
            let live_ino = std::fs::metadata(path).ok().map(|m| m.ino());
            let switched = match (&current, live_ino) {
                (Some(open), Some(ino)) => ino != open.ino,
                (None, Some(_)) => true,
                _ => false,
            };
            if switched {
                // Lines written to the old file between the drain above and its rotation.
                if let Some(open) = current.as_mut() {
                    if self.drain(open, path)?.is_err() {
                        return Ok(());
                    }
                }
                current = open_live(path)?;
                continue;
            }
            if stopping {
                return Ok(());
            }
            if self.tx.is_closed() {
                return Ok(());
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }

    /// Reads `open` to its end, handing out every complete record.
    fn drain(&mut self, open: &mut Open, path: &Path) -> Result<Result<(), Gone>, LogError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = open.file.read(&mut chunk).map_err(io_err(path))?;
            if n == 0 {
                return Ok(Ok(()));
            }
            open.pending.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(i) = open.pending[start..].iter().position(|&b| b == b'\n') {
                let line = &open.pending[start..start + i];
                start += i + 1;
                if let Some(entry) = parse_record(line, &self.opts) {
                    if self.offer(entry).is_err() {
                        return Ok(Err(Gone));
                    }
                }
            }
            open.pending.drain(..start);
        }
    }

    fn offer(&mut self, entry: LogEntry) -> Result<(), Gone> {
        if let Some(since) = self.opts.since {
            if entry.time < since {
                return Ok(());
            }
        }
        if self.in_tail {
            if let Some(n) = self.opts.tail {
                if n == 0 {
                    return Ok(());
                }
                if self.tail.len() == n {
                    self.tail.pop_front();
                }
                self.tail.push_back(entry);
                return Ok(());
            }
        }
        self.tx.blocking_send(Ok(entry)).map_err(|_| Gone)
    }
}

fn open_live(path: &Path) -> Result<Option<Open>, LogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let ino = file.metadata().map_err(io_err(path))?.ino();
    let mut open = Open {
        file,
        ino,
        pending: Vec::new(),
    };
    open.file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    Ok(Some(open))
}

fn parse_record(line: &[u8], opts: &LogReadOptions) -> Option<LogEntry> {
    let rec: RecordIn = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "skipping a malformed json-file log line");
            return None;
        }
    };
    let time = OffsetDateTime::parse(&rec.time, &Rfc3339).ok()?;
    let mut bytes = Vec::with_capacity(rec.log.len() + rec.time.len() + 1);
    if opts.timestamps {
        bytes.extend_from_slice(rec.time.as_bytes());
        bytes.push(b' ');
    }
    bytes.extend_from_slice(rec.log.as_bytes());
    Some(LogEntry {
        stream: rec.stream,
        time,
        line: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn records(path: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["time"].as_str().unwrap().ends_with('Z'));
                (
                    v["stream"].as_str().unwrap().to_string(),
                    v["log"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn splits_lines_and_keeps_partials_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 0, 1).unwrap();
        w.write_line(LogStream::Stdout, b"hel").unwrap();
        w.write_line(LogStream::Stderr, b"err1\nerr").unwrap();
        w.write_line(LogStream::Stdout, b"lo\nworld\n\nta").unwrap();
        w.flush_all().unwrap();
        assert_eq!(
            records(&path),
            vec![
                ("stderr".into(), "err1\n".into()),
                ("stdout".into(), "hello\n".into()),
                ("stdout".into(), "world\n".into()),
                ("stdout".into(), "\n".into()),
                ("stdout".into(), "ta".into()),
                ("stderr".into(), "err".into()),
            ]
        );
    }

    #[test]
    fn long_lines_become_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 0, 1).unwrap();
        let mut long = vec![b'x'; MAX_PARTIAL * 2 + 10];
        long.push(b'\n');
        for chunk in long.chunks(1000) {
            w.write_line(LogStream::Stdout, chunk).unwrap();
        }
        let recs = records(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].1.len(), MAX_PARTIAL);
        assert_eq!(recs[1].1.len(), MAX_PARTIAL);
        assert_eq!(recs[2].1, format!("{}\n", "x".repeat(10)));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 0, 1).unwrap();
        w.write_line(LogStream::Stdout, b"a\xffb\n").unwrap();
        assert_eq!(records(&path)[0].1, "a\u{fffd}b\n");
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 200, 3).unwrap();
        for i in 0..40 {
            w.write_line(LogStream::Stdout, format!("line {i:02}\n").as_bytes())
                .unwrap();
        }
        for n in 0..3 {
            let p = rotated_path(&path, n);
            assert!(p.exists(), "{p:?}");
            assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        }
        assert!(!rotated_path(&path, 3).exists());
        let last = records(&path);
        assert_eq!(last.last().unwrap().1, "line 39\n");
        // The kept files hold a contiguous run ending at the last line.
        let mut all = Vec::new();
        for n in (0..3).rev() {
            all.extend(records(&rotated_path(&path, n)).into_iter().map(|r| r.1));
        }
        let first: usize = all[0][5..7].parse().unwrap();
        let want: Vec<String> = (first..40).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(all, want);
        assert!(first > 0);
    }

    #[test]
    fn one_file_is_truncated_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 200, 1).unwrap();
        for i in 0..40 {
            w.write_line(LogStream::Stdout, format!("line {i:02}\n").as_bytes())
                .unwrap();
        }
        assert!(!rotated_path(&path, 1).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert_eq!(records(&path).last().unwrap().1, "line 39\n");
    }

    async fn collect(path: &Path, opts: LogReadOptions) -> Vec<LogEntry> {
        read_logs(path, opts, std::future::ready(()))
            .await
            .map(|r| r.unwrap())
            .collect()
            .await
    }

    fn text(entries: &[LogEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.line.clone()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn reads_rotated_files_oldest_first_with_tail_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 300, 10).unwrap();
        for i in 0..30 {
            w.write_line(LogStream::Stdout, format!("line {i:02}\n").as_bytes())
                .unwrap();
        }
        assert!(rotated_path(&path, 2).exists());
        let all = collect(&path, LogReadOptions::default()).await;
        let want: Vec<String> = (0..30).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(text(&all), want);

        let tail = collect(
            &path,
            LogReadOptions {
                tail: Some(3),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(text(&tail), want[27..].to_vec());
        let none = collect(
            &path,
            LogReadOptions {
                tail: Some(0),
                ..Default::default()
            },
        )
        .await;
        assert!(none.is_empty());

        let later = collect(
            &path,
            LogReadOptions {
                since: Some(OffsetDateTime::now_utc() + time::Duration::hours(1)),
                ..Default::default()
            },
        )
        .await;
        assert!(later.is_empty());

        let stamped = collect(
            &path,
            LogReadOptions {
                tail: Some(1),
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        let s = String::from_utf8(stamped[0].line.clone()).unwrap();
        let (t, rest) = s.split_once(' ').unwrap();
        assert_eq!(OffsetDateTime::parse(t, &Rfc3339).unwrap(), stamped[0].time);
        assert_eq!(rest, "line 29\n");
    }

    #[tokio::test]
    async fn missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            collect(&dir.path().join("json.log"), LogReadOptions::default())
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_rotation_and_drains_after_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("json.log");
        let mut w = LogWriter::open(&path, 250, 5).unwrap();
        w.write_line(LogStream::Stdout, b"old 1\nold 2\n").unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = Box::pin(
            read_logs(
                path.clone(),
                LogReadOptions {
                    follow: true,
                    tail: Some(1),
                    ..Default::default()
                },
                stop_rx,
            )
            .await,
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.line, b"old 2\n");

        // Written while following, with rotations (250 bytes is about 3 records).
        let writer = std::thread::spawn(move || {
            for i in 0..12 {
                w.write_line(LogStream::Stderr, format!("new {i:02}\n").as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
            // Written just before the container "exits": must still be read.
            w.write_line(LogStream::Stdout, b"last\n").unwrap();
        });
        let mut got = Vec::new();
        for _ in 0..12 {
            let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("follow produced nothing")
                .unwrap()
                .unwrap();
            assert_eq!(e.stream, LogStream::Stderr);
            got.push(String::from_utf8(e.line).unwrap());
        }
        let want: Vec<String> = (0..12).map(|i| format!("new {i:02}\n")).collect();
        assert_eq!(got, want);
        writer.join().unwrap();
        stop_tx.send(()).unwrap();
        let rest: Vec<LogEntry> = tokio::time::timeout(
            Duration::from_secs(10),
            stream.map(|r| r.unwrap()).collect::<Vec<_>>(),
        )
        .await
        .expect("follow did not end after stop");
        assert_eq!(text(&rest), vec!["last\n".to_string()]);
    }
}
