//! The fatbin containers nvcc embeds in programs: a header followed by ELF/PTX entries, each
//! with a header of its own (kind, target, flags, stored and uncompressed sizes).
//!
//! The shim uses this to bound a container in its process's memory (its size is only known
//! from its headers), to validate it before it is shipped and to name its entries in logs;
//! the executor's simulator to find the cubin or PTX inside. Every length is checked against
//! the bytes there are: a container from a guest is refused with an error, never read past.

/// `__fatBinC_Wrapper_t::magic`.
pub const WRAPPER_MAGIC: u32 = 0x4662_43B1;
/// `fatBinaryHeader::magic`.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Bytes of a `__fatBinC_Wrapper_t`: `{ int magic; int version; const fatBinaryHeader *data;
/// void *filename_or_fatbins; }`.
pub const WRAPPER_LEN: usize = 24;
/// The largest container we accept (a sanity bound against garbage headers).
pub const MAX_FATBIN: u64 = 1 << 31;

/// Bytes of a container's header.
pub const HEADER_LEN: usize = 16;
const ENTRY_HEADER_MIN: usize = 64;
const FLAG_LZ4: u64 = 0x2000;
const FLAG_ZSTD: u64 = 0x8000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatbinError {
    #[error("NULL fatbin pointer")]
    Null,
    #[error("bad fatbin wrapper magic {0:#010x} (expected {WRAPPER_MAGIC:#010x})")]
    WrapperMagic(u32),
    #[error("unsupported fatbin wrapper version {0}")]
    WrapperVersion(u32),
    #[error("bad fatbin magic {0:#010x} (expected {FATBIN_MAGIC:#010x})")]
    Magic(u32),
    #[error("unsupported fatbin version {0}")]
    Version(u16),
    #[error("fatbin header size {0} is too small")]
    HeaderSize(u16),
    #[error("fatbin of {0} bytes is over the {MAX_FATBIN} byte limit")]
    TooLarge(u64),
    #[error("fatbin truncated: {0}")]
    Truncated(&'static str),
    #[error("fatbin entry at offset {0} is malformed: {1}")]
    Entry(usize, &'static str),
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ptx,
    Elf,
    Other(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

/// One entry of a fatbin (header facts only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// `sm_90` is 90.
    pub sm: u32,
    pub flags: u64,
    pub compression: Compression,
    /// Offset of the payload from the start of the container.
    pub payload_offset: usize,
    /// Bytes of payload as stored (compressed size when compressed).
    pub payload_len: usize,
    /// Size after decompression (0 when not compressed).
    pub uncompressed_len: u64,
}

use crate::{read_u16 as u16_at, read_u32 as u32_at, read_u64 as u64_at};

/// The container a `__fatBinC_Wrapper_t` points at (its `data`, an address in the process
/// that holds the wrapper), after checking the wrapper's magic and version. Version 2
/// (`-rdc`) also lists prelinked fatbins; only `data` is returned.
pub fn wrapper_data(wrapper: &[u8]) -> Result<u64, FatbinError> {
    let magic = u32_at(wrapper, 0).ok_or(FatbinError::Truncated("wrapper"))?;
    if magic != WRAPPER_MAGIC {
        return Err(FatbinError::WrapperMagic(magic));
    }
    let version = u32_at(wrapper, 4).ok_or(FatbinError::Truncated("wrapper"))?;
    if version != 1 && version != 2 {
        return Err(FatbinError::WrapperVersion(version));
    }
    u64_at(wrapper, 8).ok_or(FatbinError::Truncated("wrapper"))
}

/// Length of the container from its 16-byte header.
pub fn container_len(header: &[u8]) -> Result<usize, FatbinError> {
    let magic = u32_at(header, 0).ok_or(FatbinError::Truncated("header"))?;
    if magic != FATBIN_MAGIC {
        return Err(FatbinError::Magic(magic));
    }
    let version = u16_at(header, 4).ok_or(FatbinError::Truncated("header"))?;
    if version != 1 {
        return Err(FatbinError::Version(version));
    }
    let header_size = u16_at(header, 6).ok_or(FatbinError::Truncated("header"))?;
    if usize::from(header_size) < HEADER_LEN {
        return Err(FatbinError::HeaderSize(header_size));
    }
    let files = u64_at(header, 8).ok_or(FatbinError::Truncated("header"))?;
    let total = files
        .checked_add(u64::from(header_size))
        .filter(|&t| t <= MAX_FATBIN)
        .ok_or(FatbinError::TooLarge(files))?;
    usize::try_from(total).map_err(|_| FatbinError::TooLarge(total))
}

/// Parses a fatbin container; `bytes` may extend past it. Returns its length and entries.
pub fn parse(bytes: &[u8]) -> Result<(usize, Vec<Entry>), FatbinError> {
    let total = container_len(bytes)?;
    if total > bytes.len() {
        return Err(FatbinError::Truncated("entries run past the buffer"));
    }
    let image = &bytes[..total];
    let mut off = usize::from(u16_at(image, 6).unwrap_or(16));
    let mut entries = Vec::new();
    while off < total {
        let bad = |why| FatbinError::Entry(off, why);
        // `off` is below `total`, at most `MAX_FATBIN`: these sums cannot overflow.
        let kind = u16_at(image, off).ok_or(bad("header truncated"))?;
        let header_size = u32_at(image, off + 4).ok_or(bad("header truncated"))? as usize;
        if header_size < ENTRY_HEADER_MIN {
            return Err(bad("header too small"));
        }
        let padded = u64_at(image, off + 8).ok_or(bad("header truncated"))?;
        let stored = u64::from(u32_at(image, off + 16).ok_or(bad("header truncated"))?);
        let sm = u32_at(image, off + 28).ok_or(bad("header truncated"))?;
        let flags = u64_at(image, off + 40).ok_or(bad("header truncated"))?;
        let uncompressed = u64_at(image, off + 56).ok_or(bad("header truncated"))?;
        let compression = if flags & FLAG_ZSTD != 0 {
            Compression::Zstd
        } else if flags & FLAG_LZ4 != 0 {
            Compression::Lz4
        } else {
            Compression::None
        };
        // Uncompressed entries store the payload size only as the padded size.
        let payload = if compression == Compression::None || stored == 0 {
            padded
        } else {
            stored
        };
        let start = off.checked_add(header_size).ok_or(bad("size overflow"))?;
        let payload_len = usize::try_from(payload).map_err(|_| bad("size overflow"))?;
        let step = usize::try_from(padded.max(payload)).map_err(|_| bad("size overflow"))?;
        let end = start.checked_add(step).ok_or(bad("size overflow"))?;
        if end > total {
            return Err(bad("payload runs past the container"));
        }
        entries.push(Entry {
            kind: match kind {
                1 => Kind::Ptx,
                2 => Kind::Elf,
                k => Kind::Other(k),
            },
            sm,
            flags,
            compression,
            payload_offset: start,
            payload_len,
            uncompressed_len: if compression == Compression::None {
                0
            } else {
                uncompressed
            },
        });
        off = end;
    }
    Ok((total, entries))
}

/// A one-line description of a container's entries, for logs.
pub fn describe(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            let kind = match e.kind {
                Kind::Ptx => "ptx".to_string(),
                Kind::Elf => "elf".to_string(),
                Kind::Other(k) => format!("kind{k}"),
            };
            let comp = match e.compression {
                Compression::None => "",
                Compression::Lz4 => "+lz4",
                Compression::Zstd => "+zstd",
            };
            format!("{kind}/sm_{}{comp} {}B", e.sm, e.payload_len)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn plain_fatbin_has_compressed_ptx_and_plain_elf() {
        let image = fixture("kernels.fatbin");
        let (len, entries) = parse(&image).unwrap();
        assert_eq!(len, image.len());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].kind, Kind::Ptx);
        assert_eq!(entries[0].compression, Compression::Zstd);
        assert_eq!(entries[0].payload_len, 1756);
        assert_eq!(entries[0].uncompressed_len, 7605);
        assert_eq!(entries[1].kind, Kind::Elf);
        assert_eq!(entries[1].sm, 90);
        assert_eq!(entries[1].compression, Compression::None);
        let elf = &image[entries[1].payload_offset..][..entries[1].payload_len];
        assert!(elf.starts_with(b"\x7fELF"));
        assert_eq!(elf, fixture("kernels.cubin").as_slice());
    }

    #[test]
    fn compressed_fatbin_has_one_zstd_elf() {
        let image = fixture("kernels_compressed.fatbin");
        let (len, entries) = parse(&image).unwrap();
        assert_eq!(len, image.len());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, Kind::Elf);
        assert_eq!(entries[0].compression, Compression::Zstd);
        assert_eq!(entries[0].uncompressed_len, 20080);
        assert_eq!(describe(&entries), "elf/sm_90+zstd 3990B");
    }

    #[test]
    fn a_wrapper_names_its_container() {
        let mut wrapper = Vec::new();
        wrapper.extend_from_slice(&WRAPPER_MAGIC.to_le_bytes());
        wrapper.extend_from_slice(&2u32.to_le_bytes());
        wrapper.extend_from_slice(&0x1234_5678u64.to_le_bytes());
        wrapper.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(wrapper.len(), WRAPPER_LEN);
        assert_eq!(wrapper_data(&wrapper), Ok(0x1234_5678));
        assert_eq!(
            wrapper_data(&wrapper[..12]),
            Err(FatbinError::Truncated("wrapper"))
        );
        wrapper[4] = 3;
        assert_eq!(wrapper_data(&wrapper), Err(FatbinError::WrapperVersion(3)));
        assert_eq!(wrapper_data(&[0; 24]), Err(FatbinError::WrapperMagic(0)));
    }

    #[test]
    fn garbage_is_refused_not_read_past() {
        let image = fixture("kernels.fatbin");
        assert_eq!(parse(&image[..8]), Err(FatbinError::Truncated("header")));
        assert!(matches!(
            parse(&image[..100]),
            Err(FatbinError::Truncated(_))
        ));
        let mut bad = image.clone();
        bad[0] = 0;
        assert!(matches!(parse(&bad), Err(FatbinError::Magic(_))));
        let mut huge = image.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(FatbinError::TooLarge(_))));
        let mut entry = image.clone();
        // First entry's padded payload size made enormous.
        entry[16 + 8..16 + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&entry), Err(FatbinError::Entry(16, _))));
    }
}
