//! Reading files that hostile hands may have put in the way: a model path,
//! a repository's `model.toml`, an ONNX file. Each is opened without
//! blocking, must be a regular file (a FIFO would wait forever for a writer,
//! `/dev/zero` never ends, a socket is not data), is read only up to its
//! cap, and is read on tokio's blocking threads within a deadline, so a file
//! on a hung mount fails its own load and never stalls the server.

use std::path::Path;
use std::time::Duration;

/// Why a file could not be read.
#[derive(Debug)]
pub enum FileError {
    /// Nothing at that path (the caller knows what to suggest).
    NotFound,
    /// Anything else, as one line that names the file.
    Refused(String),
}

/// Reads `path` (a `what` in messages) if it is a regular file of at most
/// `max` bytes. Symlinks are followed: the caller decides where they may
/// lead.
pub fn read_regular(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let shown = path.display();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO for reading would wait for a writer; with
        // O_NONBLOCK it returns at once, and the check below refuses it.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::NotFound);
        }
        Err(err) => {
            return Err(FileError::Refused(format!(
                "cannot read {what} {shown}: {err}"
            )));
        }
    };
    let refused = |why: String| FileError::Refused(why);
    let meta = file
        .metadata()
        .map_err(|err| refused(format!("cannot read {what} {shown}: {err}")))?;
    if !meta.is_file() {
        return Err(refused(format!(
            "{what} {shown} is not a regular file (a directory, FIFO, socket or device)"
        )));
    }
    if meta.len() > max {
        return Err(refused(format!(
            "{what} {shown} is {}, larger than the {} wasm-host reads",
            size(meta.len()),
            size(max)
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| refused(format!("cannot read {what} {shown}: {err}")))?;
    if bytes.len() as u64 > max {
        return Err(refused(format!(
            "{what} {shown} grew past the {} wasm-host reads while it was read",
            size(max)
        )));
    }
    Ok(bytes)
}

/// Why blocking work run [`off_runtime`] gave no answer: it took too long
/// (a load says "timeout"), or its task failed (the host's own fault). Its
/// text follows what was being done: "reading X took longer than ...".
#[derive(Debug)]
pub enum Abandoned {
    TimedOut(Duration),
    Failed(String),
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abandoned::TimedOut(timeout) => write!(
                f,
                "took longer than {timeout:?} and was abandoned (a FIFO, a device, a hung mount?)"
            ),
            Abandoned::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Runs blocking work on tokio's blocking threads, and gives up waiting for
/// it after `timeout` (the thread stays blocked; the server does not).
pub async fn off_runtime<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Abandoned> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => Err(Abandoned::Failed(err.to_string())),
        Err(_) => Err(Abandoned::TimedOut(timeout)),
    }
}

/// A byte count as a person reads it.
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wasm-host-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn only_regular_files_within_their_cap_are_read() {
        let small = scratch("small");
        std::fs::write(&small, b"instances = 2").unwrap();
        assert_eq!(
            read_regular(&small, 64, "model.toml").unwrap(),
            b"instances = 2"
        );
        let Err(FileError::Refused(why)) = read_regular(&small, 4, "model.toml") else {
            panic!("over its cap")
        };
        assert!(why.contains("larger than the 4 bytes"), "{why}");
        let Err(FileError::Refused(why)) = read_regular(Path::new("/dev/zero"), 64, "x") else {
            panic!("a device")
        };
        assert!(why.contains("not a regular file"), "{why}");
        let fifo = scratch("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let Err(FileError::Refused(why)) = read_regular(&fifo, 64, "x") else {
            panic!("a FIFO")
        };
        assert!(why.contains("not a regular file"), "{why}");
        assert!(matches!(
            read_regular(&scratch("absent"), 64, "x"),
            Err(FileError::NotFound)
        ));
    }
}
