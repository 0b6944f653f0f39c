//! Whole-file reads and block writes with O_DIRECT, through page-aligned
//! buffers (`tessera-buf`), so a cached block travels between the disk and
//! the FUSE reply without passing through the page cache: no copy into it,
//! and no dirty pages for the kernel to write back on the reader's cores.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use bytes::Bytes;
use tessera_buf::{AlignedBuf, ALIGN};

/// Read all of `path` with O_DIRECT. EINVAL means the file system does not
/// support it (tmpfs, for one); the caller falls back to buffered reads.
pub fn read(path: &Path) -> std::io::Result<Bytes> {
    let file = open(path)?;
    let size = file.metadata()?.len() as usize;
    read_at(&file, 0, size)
}

/// Open `path` for reading with O_DIRECT (EINVAL: not on this file system).
pub fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Up to `len` bytes of `file` from `off`, a multiple of [`ALIGN`], into a
/// new page-aligned buffer; fewer where the file ends first. The file may
/// be open with O_DIRECT: the kernel is asked for whole pages.
pub fn read_at(file: &File, off: u64, len: usize) -> std::io::Result<Bytes> {
    debug_assert_eq!(off % ALIGN as u64, 0);
    let mut buf = AlignedBuf::with_capacity(len)?;
    let cap = buf.capacity();
    let mut filled = 0;
    while filled < len {
        // Reads stay aligned: every read but the last returns whole pages.
        // SAFETY: the destination lies within the allocation (cap >= len).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                cap - filled,
                (off + filled as u64) as libc::off_t,
            )
        };
        match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => break,
            n => filled += n as usize,
        }
    }
    // SAFETY: pread wrote `filled` bytes from the start (within capacity).
    unsafe { buf.assume_init(filled.min(len)) };
    Ok(buf.freeze())
}

/// Write `data` then `trailer` to a new file at `path`: the whole pages of
/// `data` with O_DIRECT (which needs `data` page-aligned: see
/// [`tessera_buf::is_aligned`]), the rest through the page cache. EINVAL
/// means no O_DIRECT here.
pub fn write(path: &Path, data: &[u8], trailer: &[u8]) -> std::io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let whole = data.len() / ALIGN * ALIGN;
    file.write_all(&data[..whole])?;
    // The tail is not a whole page: switch the descriptor to buffered I/O.
    // SAFETY: plain fcntl calls on a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: as above.
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    file.write_all(&data[whole..])?;
    file.write_all(trailer)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unaligned_sizes_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [1usize, 4095, 4096, 4097, 100_003] {
            let p = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            std::fs::write(&p, &data).expect("write");
            match read(&p) {
                Ok(b) => assert_eq!(&b[..], &data[..]),
                // No O_DIRECT on this file system (tmpfs): nothing to check.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn writes_whole_pages_direct_and_the_tail_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [0usize, 100, 4096, 3 * 4096 + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let buf = AlignedBuf::copy_of(&data[..]).expect("alloc");
            let p = dir.path().join(format!("w{len}"));
            match write(&p, buf.as_ref(), b"TAIL") {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => panic!("{e}"),
            }
            let back = std::fs::read(&p).expect("read back");
            assert_eq!(&back[..len], buf.as_ref());
            assert_eq!(&back[len..], b"TAIL");
        }
    }
}
