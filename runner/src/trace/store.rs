//! Where the finished (masked, limited) log bytes live until GitLab has them.
//!
//! The newest bytes are kept in memory, at most `mem_limit` of them; when that window is full it
//! is appended to an anonymous temporary file (deleted by the OS when closed) and emptied. So the
//! memory a job log takes is bounded whatever the job prints, and every byte stays readable for
//! resending after a 416 or a failed PATCH.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

/// Where a range of the log can be read from. File reads happen without holding the trace lock.
pub(crate) enum ReadPlan {
    /// Nothing to read at that offset.
    Empty,
    /// Bytes copied from the in-memory window.
    Ready(Bytes),
    /// `len` bytes at `offset` of the spill file (already written, never rewritten).
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl ReadPlan {
    /// Performs the read (blocking I/O on a page-cache-backed temp file, at most one chunk).
    pub(crate) fn read(self) -> io::Result<Bytes> {
        match self {
            ReadPlan::Empty => Ok(Bytes::new()),
            ReadPlan::Ready(b) => Ok(b),
            ReadPlan::File { file, offset, len } => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Store {
    /// Bytes `[spilled, total)` of the log.
    mem: Vec<u8>,
    mem_limit: usize,
    /// Bytes `[0, spilled)` are in `file`.
    spilled: u64,
    file: Option<Arc<File>>,
    /// Directory of the spill file; the system's temporary directory when `None`.
    spill_dir: Option<PathBuf>,
    total: u64,
}

impl Store {
    pub(crate) fn new(mem_limit: usize, spill_dir: Option<PathBuf>) -> Self {
        Store {
            mem: Vec::new(),
            mem_limit: mem_limit.max(1),
            spilled: 0,
            file: None,
            spill_dir,
            total: 0,
        }
    }

    /// A store for the log of a resumed job whose first `base` bytes GitLab holds already
    /// (docs/crash-safety.md): they are never read, later bytes keep their offsets.
    pub(crate) fn starting_at(mem_limit: usize, spill_dir: Option<PathBuf>, base: u64) -> Self {
        let mut s = Store::new(mem_limit, spill_dir);
        s.spilled = base;
        s.total = base;
        s
    }

    /// Number of bytes stored.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Bytes held in memory right now.
    #[cfg(test)]
    pub(crate) fn mem_len(&self) -> usize {
        self.mem.len()
    }

    /// Bytes moved to the temporary file so far.
    #[cfg(test)]
    pub(crate) fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Appends `data`, moving the memory window to disk whenever it is full. On error the bytes
    /// not yet stored are dropped (the caller reports it); what was stored stays readable.
    pub(crate) fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.mem_limit.saturating_sub(self.mem.len());
            if room == 0 {
                self.spill()?;
                continue;
            }
            let n = room.min(data.len());
            self.reserve(n);
            self.mem.extend_from_slice(&data[..n]);
            self.total += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Appends without the memory bound: only for the few bytes of a notice after a disk error.
    pub(crate) fn append_unbounded(&mut self, data: &[u8]) {
        self.mem.extend_from_slice(data);
        self.total += data.len() as u64;
    }

    /// Grows `mem` without ever allocating more than the window.
    fn reserve(&mut self, n: usize) {
        let need = self.mem.len() + n;
        if need > self.mem.capacity() {
            let target = (self.mem.capacity() * 2)
                .max(need)
                .min(self.mem_limit)
                .max(need);
            self.mem.reserve_exact(target - self.mem.len());
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let f = match &self.spill_dir {
                    Some(dir) => tempfile::tempfile_in(dir).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("temporary file in {}: {e}", dir.display()),
                        )
                    })?,
                    None => tempfile::tempfile()?,
                };
                let f = Arc::new(f);
                self.file = Some(f.clone());
                f
            }
        };
        // The file is only ever appended to, at `spilled`; readers use positioned reads.
        file.write_all_at(&self.mem, self.spilled)?;
        self.spilled += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// Plans reading at most `max` bytes starting at `offset`.
    pub(crate) fn plan_read(&self, offset: u64, max: usize) -> ReadPlan {
        // Before `offset` 0 of the spill file: the base of a resumed log, never stored here.
        if offset >= self.total || max == 0 || (self.file.is_none() && offset < self.spilled) {
            return ReadPlan::Empty;
        }
        let end = self.total.min(offset.saturating_add(max as u64));
        if offset >= self.spilled {
            let from = (offset - self.spilled) as usize;
            let to = (end - self.spilled) as usize;
            return ReadPlan::Ready(Bytes::copy_from_slice(&self.mem[from..to]));
        }
        match &self.file {
            Some(file) => ReadPlan::File {
                file: file.clone(),
                offset,
                len: (end.min(self.spilled) - offset) as usize,
            },
            None => ReadPlan::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = s.plan_read(out.len() as u64, 7).read().unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend_from_slice(&b);
        }
    }

    #[test]
    fn spills_and_reads_back_across_the_boundary() {
        let mut s = Store::new(10, None);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for piece in data.chunks(13) {
            s.append(piece).unwrap();
            assert!(s.mem_len() <= 10);
        }
        assert_eq!(s.len(), 1000);
        assert!(s.spilled() >= 990);
        assert_eq!(read_all(&s), data);
        assert!(s.mem.capacity() <= 10);
    }

    #[test]
    fn small_logs_stay_in_memory() {
        let mut s = Store::new(1 << 20, None);
        s.append(b"hello\n").unwrap();
        assert_eq!(s.spilled(), 0);
        assert!(s.file.is_none());
        assert_eq!(read_all(&s), b"hello\n");
        assert!(matches!(s.plan_read(6, 10), ReadPlan::Empty));
    }

    #[test]
    fn a_failed_spill_keeps_what_was_stored() {
        let mut s = Store::new(4, Some(PathBuf::from("/nonexistent/ferry-spill")));
        let err = s.append(b"0123456789").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/ferry-spill"),
            "{err}"
        );
        assert_eq!(s.len(), 4);
        assert_eq!(read_all(&s), b"0123");
    }
}
