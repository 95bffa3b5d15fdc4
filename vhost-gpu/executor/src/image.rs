//! Just enough of NVIDIA's module formats to list a module's kernels and their parameter
//! layouts, and its global variables, without a driver: cubin (ELF), fatbin containers and PTX
//! text. The simulator uses it; the CUDA backend asks the driver instead.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("Image is empty or of an unknown format")]
    UnknownFormat,
    #[error("Malformed ELF: {0}")]
    BadElf(&'static str),
    #[error("Malformed fatbin: {0}")]
    BadFatbin(&'static str),
    #[error("Fatbin entry is compressed; the simulator does not decompress")]
    Compressed,
    #[error("Malformed PTX: {0}")]
    BadPtx(&'static str),
}

/// A kernel and its parameters as (offset, size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub name: String,
    pub params: Vec<(u32, u32)>,
}

/// A module global (`__device__`, `__constant__`): `size` bytes of device memory whose first
/// `init.len()` bytes start as `init` and the rest as zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalVar {
    pub name: String,
    pub size: u64,
    pub init: Vec<u8>,
}

/// What a module image holds: its kernels and its global variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    pub kernels: Vec<KernelLayout>,
    pub globals: Vec<GlobalVar>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;
const EIATTR_KPARAM_INFO: u8 = 0x17;
const EIFMT_SVAL: u8 = 0x04;
const FATBIN_KIND_PTX: u16 = 1;
const FATBIN_KIND_ELF: u16 = 2;
const FATBIN_COMPRESSED: u64 = 0x2000 | 0x8000;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const STT_OBJECT: u8 = 1;
const ELF64_SYM_SIZE: usize = 24;
/// Section indices from here on are special (`SHN_LORESERVE`: absolute, common, ...).
const SHN_LORESERVE: u16 = 0xff00;

/// Lists the kernels of a cubin, fatbin or PTX image.
pub fn kernels(image: &[u8]) -> Result<Vec<KernelLayout>, ImageError> {
    module_info(image).map(|m| m.kernels)
}

/// Lists the kernels and the global variables of a cubin, fatbin or PTX image. A fatbin's
/// first uncompressed cubin is used, else its first PTX.
pub fn module_info(image: &[u8]) -> Result<ModuleInfo, ImageError> {
    if image.starts_with(ELF_MAGIC) {
        cubin_module(image)
    } else if read_u32(image, 0) == Some(FATBIN_MAGIC) {
        fatbin_module(image)
    } else if read_u32(image, 0) == Some(FATBIN_WRAPPER_MAGIC) {
        // A `__fatBinC_Wrapper_t` holds a pointer, which means nothing outside its process.
        Err(ImageError::BadFatbin(
            "wrapper structs must be resolved by the shim",
        ))
    } else if looks_like_ptx(image) {
        ptx_module(image)
    } else {
        Err(ImageError::UnknownFormat)
    }
}

fn looks_like_ptx(image: &[u8]) -> bool {
    let head = &image[..image.len().min(4096)];
    let text = String::from_utf8_lossy(head);
    text.contains(".version") || text.contains(".entry")
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Size of a fatbin container (header plus entries), if `image` starts with one.
pub fn fatbin_len(image: &[u8]) -> Option<usize> {
    if read_u32(image, 0)? != FATBIN_MAGIC {
        return None;
    }
    let header_size = usize::from(read_u16(image, 6)?);
    let files_size = usize::try_from(read_u64(image, 8)?).ok()?;
    header_size.checked_add(files_size)
}

fn fatbin_module(image: &[u8]) -> Result<ModuleInfo, ImageError> {
    let bad = ImageError::BadFatbin;
    let total = fatbin_len(image).ok_or(bad("header"))?;
    if total > image.len() {
        return Err(bad("container runs past the image"));
    }
    let mut off = usize::from(read_u16(image, 6).ok_or(bad("header"))?);
    let mut ptx = None;
    let mut compressed = false;
    while off < total {
        let kind = read_u16(image, off).ok_or(bad("entry header"))?;
        let header_size = read_u32(image, off + 4).ok_or(bad("entry header"))? as usize;
        // Entry header: kind u16, version u16, header size u32, padded payload size u64,
        // compressed size u32 (+pad), ..., flags u64 at 40, uncompressed size u64 at 56.
        let padded = read_u64(image, off + 8).ok_or(bad("entry header"))? as usize;
        let flags = read_u64(image, off + 40).ok_or(bad("entry header"))?;
        let payload = if flags & FATBIN_COMPRESSED != 0 {
            read_u32(image, off + 16).ok_or(bad("entry header"))? as usize
        } else {
            padded
        };
        let start = off.checked_add(header_size).ok_or(bad("entry size"))?;
        let end = start.checked_add(payload).ok_or(bad("entry size"))?;
        if header_size == 0 || end > image.len() {
            return Err(bad("entry runs past the container"));
        }
        let data = &image[start..end];
        if flags & FATBIN_COMPRESSED != 0 {
            compressed = true;
        } else if kind == FATBIN_KIND_ELF {
            return cubin_module(data);
        } else if kind == FATBIN_KIND_PTX && ptx.is_none() {
            ptx = Some(data);
        }
        off = start
            .checked_add(padded.max(payload))
            .ok_or(bad("entry size"))?;
    }
    match ptx {
        Some(p) => ptx_module(p),
        None if compressed => Err(ImageError::Compressed),
        None => Err(bad("no ELF or PTX entry")),
    }
}

struct Section<'a> {
    name: &'a [u8],
    ty: u32,
    link: u32,
    data: &'a [u8],
}

fn elf_sections(image: &[u8]) -> Result<Vec<Section<'_>>, ImageError> {
    let bad = ImageError::BadElf;
    if image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64"));
    }
    let shoff = read_u64(image, 0x28).ok_or(bad("header"))? as usize;
    let shentsize = usize::from(read_u16(image, 0x3a).ok_or(bad("header"))?);
    let shnum = usize::from(read_u16(image, 0x3c).ok_or(bad("header"))?);
    let shstrndx = usize::from(read_u16(image, 0x3e).ok_or(bad("header"))?);
    if shentsize < 64 || shstrndx >= shnum {
        return Err(bad("section table"));
    }
    let sh = |i: usize| -> Result<(u32, u32, u32, &[u8]), ImageError> {
        let base = shoff
            .checked_add(i.checked_mul(shentsize).ok_or(bad("section table"))?)
            .ok_or(bad("section table"))?;
        let name = read_u32(image, base).ok_or(bad("section header"))?;
        let ty = read_u32(image, base + 4).ok_or(bad("section header"))?;
        let off = read_u64(image, base + 0x18).ok_or(bad("section header"))? as usize;
        let size = read_u64(image, base + 0x20).ok_or(bad("section header"))? as usize;
        let link = read_u32(image, base + 0x28).ok_or(bad("section header"))?;
        // SHT_NOBITS occupies no file bytes.
        let data = if ty == SHT_NOBITS {
            &[][..]
        } else {
            image
                .get(off..off.checked_add(size).ok_or(bad("section size"))?)
                .ok_or(bad("section runs past the image"))?
        };
        Ok((name, ty, link, data))
    };
    let (_, _, _, strtab) = sh(shstrndx)?;
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let (name_off, ty, link, data) = sh(i)?;
        let name = cstr(strtab, name_off as usize).ok_or(bad("section name"))?;
        out.push(Section {
            name,
            ty,
            link,
            data,
        });
    }
    Ok(out)
}

/// The NUL-terminated string at `off` of a string table.
fn cstr(table: &[u8], off: usize) -> Option<&[u8]> {
    let s = table.get(off..)?;
    Some(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())])
}

fn cubin_module(image: &[u8]) -> Result<ModuleInfo, ImageError> {
    let sections = elf_sections(image)?;
    Ok(ModuleInfo {
        kernels: cubin_kernels(&sections)?,
        globals: cubin_globals(&sections)?,
    })
}

fn cubin_kernels(sections: &[Section<'_>]) -> Result<Vec<KernelLayout>, ImageError> {
    let mut kernels = Vec::new();
    for s in sections {
        let Some(name) = s.name.strip_prefix(b".text.") else {
            continue;
        };
        let info_name = [b".nv.info.".as_slice(), name].concat();
        let mut params = Vec::new();
        if let Some(info) = sections.iter().find(|i| i.name == info_name.as_slice()) {
            params = kparam_info(info.data)?;
        }
        params.sort_unstable();
        kernels.push(KernelLayout {
            name: String::from_utf8_lossy(name).into_owned(),
            params,
        });
    }
    Ok(kernels)
}

/// The module's global variables: the data objects (`STT_OBJECT` symbols) defined in global
/// memory (`.nv.global`, zero-filled; `.nv.global.init`, initialised) and constant banks
/// (`.nv.constant<N>`), with their initial bytes where the section has file contents.
fn cubin_globals(sections: &[Section<'_>]) -> Result<Vec<GlobalVar>, ImageError> {
    let bad = ImageError::BadElf;
    let Some(symtab) = sections.iter().find(|s| s.ty == SHT_SYMTAB) else {
        return Ok(Vec::new());
    };
    let strtab = sections
        .get(symtab.link as usize)
        .ok_or(bad("symbol table's string table"))?
        .data;
    let mut globals = Vec::new();
    for sym in symtab.data.chunks_exact(ELF64_SYM_SIZE) {
        let info = sym[4];
        let shndx = u16::from_le_bytes([sym[6], sym[7]]);
        let value = read_u64(sym, 8).ok_or(bad("symbol"))?;
        let size = read_u64(sym, 16).ok_or(bad("symbol"))?;
        if info & 0xf != STT_OBJECT || size == 0 || shndx == 0 || shndx >= SHN_LORESERVE {
            continue;
        }
        let section = sections
            .get(usize::from(shndx))
            .ok_or(bad("symbol's section"))?;
        if !(section.name.starts_with(b".nv.global") || section.name.starts_with(b".nv.constant")) {
            continue;
        }
        let name = cstr(strtab, read_u32(sym, 0).ok_or(bad("symbol"))? as usize)
            .ok_or(bad("symbol name"))?;
        let init = if section.ty == SHT_NOBITS {
            Vec::new()
        } else {
            // What of the object lies within the section's bytes (all of it, when well formed).
            usize::try_from(value)
                .ok()
                .and_then(|start| section.data.get(start..))
                .map(|d| d[..d.len().min(usize::try_from(size).unwrap_or(usize::MAX))].to_vec())
                .unwrap_or_default()
        };
        globals.push(GlobalVar {
            name: String::from_utf8_lossy(name).into_owned(),
            size,
            init,
        });
    }
    Ok(globals)
}

/// Parameter (offset, size) pairs from a `.nv.info.<kernel>` attribute list.
fn kparam_info(mut data: &[u8]) -> Result<Vec<(u32, u32)>, ImageError> {
    let mut params = Vec::new();
    while data.len() >= 4 {
        let (fmt, attr) = (data[0], data[1]);
        let (value_len, value) = if fmt == EIFMT_SVAL {
            let n = usize::from(u16::from_le_bytes([data[2], data[3]]));
            (
                n,
                data.get(4..4 + n)
                    .ok_or(ImageError::BadElf("attribute runs past .nv.info"))?,
            )
        } else {
            (0, &[][..])
        };
        if attr == EIATTR_KPARAM_INFO && value.len() >= 12 {
            let offset = u32::from(u16::from_le_bytes([value[6], value[7]]));
            let word = u32::from_le_bytes([value[8], value[9], value[10], value[11]]);
            params.push((offset, word >> 18));
        }
        data = &data[4 + value_len..];
    }
    Ok(params)
}

fn ptx_module(image: &[u8]) -> Result<ModuleInfo, ImageError> {
    let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
    let text = std::str::from_utf8(&image[..end]).map_err(|_| ImageError::BadPtx("not UTF-8"))?;
    Ok(ModuleInfo {
        kernels: ptx_kernels(text)?,
        globals: ptx_globals(text),
    })
}

fn ptx_kernels(text: &str) -> Result<Vec<KernelLayout>, ImageError> {
    let mut kernels = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find(".entry") {
        rest = &rest[pos + ".entry".len()..];
        let open = rest.find('(');
        let brace = rest.find('{');
        let name_end = match (open, brace) {
            (Some(o), Some(b)) => o.min(b),
            (Some(o), None) => o,
            (None, Some(b)) => b,
            (None, None) => return Err(ImageError::BadPtx("entry without body")),
        };
        let name = rest[..name_end].trim().to_string();
        let mut params = Vec::new();
        if open.is_some_and(|o| Some(o) == Some(name_end)) {
            let close = rest
                .find(')')
                .ok_or(ImageError::BadPtx("unclosed parameter list"))?;
            let mut offset = 0u32;
            for decl in rest[name_end + 1..close].split(',') {
                let Some((align, size)) = ptx_param(decl) else {
                    continue;
                };
                offset = offset.div_ceil(align) * align;
                params.push((offset, size));
                offset += size;
            }
        }
        kernels.push(KernelLayout { name, params });
    }
    Ok(kernels)
}

/// (alignment, size) of one `.param` declaration.
fn ptx_param(decl: &str) -> Option<(u32, u32)> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    if words.first() != Some(&".param") {
        return None;
    }
    let mut align = None;
    let mut elem = 0u32;
    let mut name = "";
    let mut i = 1;
    while i < words.len() {
        let w = words[i];
        if w == ".align" {
            align = words.get(i + 1).and_then(|a| a.parse().ok());
            i += 2;
            continue;
        }
        if w == ".ptr"
            || w.starts_with(".global")
            || w.starts_with(".const")
            || w.starts_with(".local")
            || w.starts_with(".shared")
        {
            i += 1;
            continue;
        }
        if let Some(t) = w.strip_prefix('.') {
            elem = match t {
                "b8" | "u8" | "s8" | "pred" => 1,
                "b16" | "u16" | "s16" | "f16" | "bf16" => 2,
                "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" => 4,
                "b64" | "u64" | "s64" | "f64" => 8,
                _ => elem,
            };
        } else {
            name = w;
        }
        i += 1;
    }
    if elem == 0 {
        return None;
    }
    let count = match (name.find('['), name.find(']')) {
        (Some(a), Some(b)) if b > a => name[a + 1..b].parse::<u32>().ok()?,
        _ => 1,
    };
    Some((align.unwrap_or(elem).max(1), elem * count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64
.visible .entry vecAdd(
	.param .u64 vecAdd_param_0,
	.param .u64 vecAdd_param_1,
	.param .u64 .ptr .global .align 4 vecAdd_param_2,
	.param .u32 vecAdd_param_3
)
{ ret; }
.visible .entry withStruct(
	.param .u32 p0,
	.param .align 8 .b8 p1[24],
	.param .u8 p2
)
{ ret; }
.visible .entry noParams()
{ ret; }
"#;

    #[test]
    fn ptx_layouts_follow_alignment_rules() {
        let k = kernels(PTX.as_bytes()).unwrap();
        assert_eq!(k.len(), 3);
        assert_eq!(k[0].name, "vecAdd");
        assert_eq!(k[0].params, vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
        assert_eq!(k[1].params, vec![(0, 4), (8, 24), (32, 1)]);
        assert!(k[2].params.is_empty());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(kernels(b""), Err(ImageError::UnknownFormat));
        assert!(kernels(b"\x7fELF\x02\x01garbage").is_err());
        let mut fat = vec![0u8; 16];
        fat[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
        fat[6] = 16;
        fat[8] = 200;
        assert!(kernels(&fat).is_err());
    }

    #[test]
    fn truncated_elf_never_panics() {
        let mut elf = [0u8; 128];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        for cut in 0..elf.len() {
            let _ = kernels(&elf[..cut]);
        }
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// The kernels of tests/gpu/kernels.cu as nvcc 13.0 built them for sm_90.
    fn expected() -> Vec<(&'static str, Vec<(u32, u32)>)> {
        vec![
            ("empty", vec![]),
            ("matmul", vec![(0, 8), (8, 8), (16, 8), (24, 4)]),
            ("reduceSum", vec![(0, 8), (8, 8), (16, 4)]),
            ("saxpy", vec![(0, 4), (8, 8), (16, 8), (24, 4)]),
            ("spin", vec![(0, 8), (8, 4)]),
            ("vecAdd", vec![(0, 8), (8, 8), (16, 8), (24, 4)]),
        ]
    }

    fn check(image: &[u8]) {
        let mut got: Vec<(String, Vec<(u32, u32)>)> = kernels(image)
            .unwrap()
            .into_iter()
            .map(|k| (k.name, k.params))
            .collect();
        got.sort();
        let want: Vec<(String, Vec<(u32, u32)>)> = expected()
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn real_cubin_ptx_and_fatbin_give_the_same_layouts() {
        check(&fixture("kernels.cubin"));
        check(&fixture("kernels.ptx"));
        check(&fixture("kernels.fatbin"));
    }

    #[test]
    fn compressed_fatbin_is_reported_as_such() {
        let image = fixture("kernels_compressed.fatbin");
        assert_eq!(fatbin_len(&image), Some(image.len()));
        assert_eq!(kernels(&image), Err(ImageError::Compressed));
    }
}
