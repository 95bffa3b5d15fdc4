//! The one parser of NVIDIA's module images in the project: cubin (ELF), fatbin containers
//! ([`fatbin`]) and PTX text. The shim uses it to bound and check images in its process's
//! memory before it ships them; the executor's simulator to list a module's kernels with
//! their parameter layouts, and its global variables, without a driver (the CUDA backend
//! asks the driver instead).
//!
//! Images reach the executor from guests, so nothing here trusts a length: malformed input
//! is refused with an error, never a panic or a read past the bytes given (the `image` fuzz
//! target checks it). No `unsafe`: callers that hold only a pointer read the headers first
//! and pass the bytes they found.

#![forbid(unsafe_code)]

use thiserror::Error;

pub mod fatbin;

pub use fatbin::FatbinError;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("Image is empty or of an unknown format")]
    UnknownFormat,
    #[error("Malformed ELF: {0}")]
    BadElf(&'static str),
    #[error("Malformed fatbin: {0}")]
    BadFatbin(&'static str),
    #[error("Malformed fatbin")]
    Fatbin(#[from] FatbinError),
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

/// The first bytes of a cubin.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Bytes of an ELF64 header.
pub const ELF_HEADER_LEN: usize = 64;
use fatbin::{FATBIN_MAGIC, WRAPPER_MAGIC as FATBIN_WRAPPER_MAGIC};
const EIATTR_KPARAM_INFO: u8 = 0x17;
const EIFMT_SVAL: u8 = 0x04;
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

pub(crate) fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Size of a fatbin container (header plus entries), if `image` starts with a valid header.
pub fn fatbin_len(image: &[u8]) -> Option<usize> {
    fatbin::container_len(image).ok()
}

fn fatbin_module(image: &[u8]) -> Result<ModuleInfo, ImageError> {
    let (_, entries) = fatbin::parse(image)?;
    let mut ptx = None;
    let mut compressed = false;
    for e in &entries {
        let data = &image[e.payload_offset..][..e.payload_len];
        if e.compression != fatbin::Compression::None {
            compressed = true;
        } else if e.kind == fatbin::Kind::Elf {
            return cubin_module(data);
        } else if e.kind == fatbin::Kind::Ptx && ptx.is_none() {
            ptx = Some(data);
        }
    }
    match ptx {
        Some(p) => ptx_module(p),
        None if compressed => Err(ImageError::Compressed),
        None => Err(ImageError::BadFatbin("no ELF or PTX entry")),
    }
}

/// Where an ELF64 image's section header table lies, as (offset, length), from its first
/// [`ELF_HEADER_LEN`] bytes.
pub fn elf_section_table(header: &[u8]) -> Result<(usize, usize), ImageError> {
    let bad = ImageError::BadElf;
    if !header.starts_with(ELF_MAGIC) {
        return Err(bad("no ELF magic"));
    }
    if header.get(4) != Some(&2) || header.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64"));
    }
    let shoff = usize::try_from(read_u64(header, 0x28).ok_or(bad("header"))?)
        .map_err(|_| bad("section table"))?;
    let shentsize = usize::from(read_u16(header, 0x3a).ok_or(bad("header"))?);
    let shnum = usize::from(read_u16(header, 0x3c).ok_or(bad("header"))?);
    if shnum > 0 && shentsize < 64 {
        return Err(bad("section table"));
    }
    let len = shentsize * shnum;
    shoff.checked_add(len).ok_or(bad("section table"))?;
    Ok((shoff, len))
}

/// The length of an ELF64 image: the furthest end of its section table, program header
/// table and section contents. `header` is its first [`ELF_HEADER_LEN`] bytes, `sections`
/// its section header table (where [`elf_section_table`] says it lies).
pub fn elf_len(header: &[u8], sections: &[u8]) -> Result<usize, ImageError> {
    let bad = ImageError::BadElf;
    let (shoff, shlen) = elf_section_table(header)?;
    if sections.len() < shlen {
        return Err(bad("section table truncated"));
    }
    let shentsize = usize::from(read_u16(header, 0x3a).ok_or(bad("header"))?);
    let phoff = read_u64(header, 0x20).ok_or(bad("header"))?;
    let phentsize = u64::from(read_u16(header, 0x36).ok_or(bad("header"))?);
    let phnum = u64::from(read_u16(header, 0x38).ok_or(bad("header"))?);
    let too_large = || bad("image larger than the address space");
    let mut end = phoff
        .checked_add(phentsize * phnum)
        .ok_or_else(too_large)?
        .max((shoff + shlen) as u64)
        .max(ELF_HEADER_LEN as u64);
    if shentsize > 0 {
        for sh in sections[..shlen].chunks_exact(shentsize) {
            let ty = read_u32(sh, 4).ok_or(bad("section header"))?;
            let off = read_u64(sh, 0x18).ok_or(bad("section header"))?;
            let size = read_u64(sh, 0x20).ok_or(bad("section header"))?;
            // SHT_NOBITS occupies no file bytes.
            if ty != SHT_NOBITS {
                end = end.max(off.checked_add(size).ok_or_else(too_large)?);
            }
        }
    }
    usize::try_from(end).map_err(|_| too_large())
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
            let list = &rest[name_end + 1..];
            let close = list
                .find(')')
                .ok_or(ImageError::BadPtx("unclosed parameter list"))?;
            let too_large = || ImageError::BadPtx("parameters too large");
            let mut offset = 0u32;
            for decl in list[..close].split(',') {
                let Some((align, size)) = ptx_param(decl) else {
                    continue;
                };
                offset = offset
                    .checked_next_multiple_of(align)
                    .ok_or_else(too_large)?;
                params.push((offset, size));
                offset = offset.checked_add(size).ok_or_else(too_large)?;
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
            elem = ptx_type_size(t).unwrap_or(elem);
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
    Some((align.unwrap_or(elem).max(1), elem.checked_mul(count)?))
}

/// Size in bytes of a PTX fundamental type (without its dot).
fn ptx_type_size(t: &str) -> Option<u32> {
    Some(match t {
        "b8" | "u8" | "s8" | "pred" => 1,
        "b16" | "u16" | "s16" | "f16" | "bf16" => 2,
        "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" => 4,
        "b64" | "u64" | "s64" | "f64" => 8,
        _ => return None,
    })
}

/// PTX text without its `//` and `/* */` comments, and without the module directives that
/// end at the line's end instead of a `;` (`.version`, `.target`, `.address_size`, `.file`).
fn strip_ptx_comments(text: &str) -> String {
    let text = strip_comments(text);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if ![".version", ".target", ".address_size", ".file"].contains(&first) {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// PTX text without its `//` and `/* */` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('/') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("//") {
            rest = tail.find('\n').map_or("", |e| &tail[e..]);
        } else if let Some(body) = tail.strip_prefix("/*") {
            out.push(' ');
            rest = body.find("*/").map_or("", |e| &body[e + 2..]);
        } else {
            out.push('/');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The module-scope `.global` and `.const` variables of PTX text. Numeric initialisers
/// (`.b8 t[8] = {1, 0, ...}`, `.f64 x = 0d3FD0000000000000`) give the initial bytes; any other
/// element (the address of another symbol) starts as zeros, as does a variable without one.
fn ptx_globals(text: &str) -> Vec<GlobalVar> {
    let text = strip_ptx_comments(text);
    let mut globals = Vec::new();
    let mut stmt = String::new();
    // Depth of the braces of an initialiser.
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' if depth == 0 && !stmt.contains('=') => {
                // A function body (with its nested blocks): nothing in it is module scope.
                let mut open = 1usize;
                for c in chars.by_ref() {
                    match c {
                        '{' => open += 1,
                        '}' => {
                            open -= 1;
                            if open == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                stmt.clear();
            }
            '{' => {
                depth += 1;
                stmt.push(c);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                stmt.push(c);
            }
            ';' if depth == 0 => {
                globals.extend(ptx_global(&stmt));
                stmt.clear();
            }
            _ => stmt.push(c),
        }
    }
    globals
}

/// One module-scope statement, if it defines a `.global` or `.const` variable.
fn ptx_global(stmt: &str) -> Option<GlobalVar> {
    let (decl, init) = match stmt.split_once('=') {
        Some((d, i)) => (d, Some(i)),
        None => (stmt, None),
    };
    let mut words = decl.split_whitespace();
    loop {
        match words.next()? {
            ".visible" | ".weak" | ".common" => {}
            ".global" | ".const" => break,
            // `.extern` declares a variable defined elsewhere; anything else is no variable.
            _ => return None,
        }
    }
    let (mut elem, mut lanes) = (0u64, 1u64);
    let mut declarator = String::new();
    while let Some(w) = words.next() {
        if !declarator.is_empty() {
            declarator.push_str(w);
        } else if w == ".align" {
            words.next();
        } else if let Some(t) = w.strip_prefix('.') {
            match t {
                "v2" => lanes = 2,
                "v4" => lanes = 4,
                "v8" => lanes = 8,
                t => elem = ptx_type_size(t).map_or(elem, u64::from),
            }
        } else {
            declarator.push_str(w);
        }
    }
    let elem_size = elem.checked_mul(lanes).filter(|&n| n > 0)?;
    let (name, mut dims) = declarator.split_at(declarator.find('[').unwrap_or(declarator.len()));
    if name.is_empty() {
        return None;
    }
    let elems: Vec<&str> = init
        .map(|i| {
            i.split([',', '{', '}'])
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Array dimensions; `[]` takes its length from the initialiser.
    let (mut count, mut open_dim) = (1u64, false);
    while !dims.is_empty() {
        let d = dims.strip_prefix('[')?;
        let close = d.find(']')?;
        match d[..close].trim() {
            "" => open_dim = true,
            n => count = count.checked_mul(n.parse().ok()?)?,
        }
        dims = &d[close + 1..];
    }
    if open_dim {
        let entries = (elems.len() as u64).div_ceil(lanes);
        count = count.checked_mul(entries.div_ceil(count).max(1))?;
    }
    let size = elem_size.checked_mul(count)?;
    let mut bytes = Vec::new();
    for e in &elems {
        if bytes.len() as u64 >= size {
            break;
        }
        let value = ptx_number(e, elem).unwrap_or(0);
        bytes.extend_from_slice(&value.to_le_bytes()[..elem as usize]);
    }
    bytes.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    Some(GlobalVar {
        name: name.to_string(),
        size,
        init: bytes,
    })
}

/// The bits of a PTX numeric literal as an element of `elem` bytes: integers (decimal, hex,
/// octal-free), `0f`/`0d` float bit patterns, and decimal floats.
fn ptx_number(lit: &str, elem: u64) -> Option<u64> {
    let lit = lit.trim_end_matches(['U', 'u']);
    let (neg, digits) = match lit.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, lit),
    };
    let magnitude = if let Some(h) = digits
        .strip_prefix("0f")
        .or_else(|| digits.strip_prefix("0F"))
    {
        u64::from(u32::from_str_radix(h, 16).ok()?)
    } else if let Some(h) = digits
        .strip_prefix("0d")
        .or_else(|| digits.strip_prefix("0D"))
    {
        u64::from_str_radix(h, 16).ok()?
    } else if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(h, 16).ok()?
    } else if let Ok(n) = digits.parse::<u64>() {
        n
    } else {
        let f: f64 = lit.parse().ok()?;
        return Some(if elem == 4 {
            u64::from((f as f32).to_bits())
        } else {
            f.to_bits()
        });
    };
    Some(if neg {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
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

    /// Found by the `image` fuzz target: a `)` before the entry's `(` sliced backwards, and
    /// parameter sizes past `u32` overflowed.
    #[test]
    fn ptx_parameter_lists_that_lie_are_refused() {
        assert!(kernels(b".entry k ) x ( .param .u32 a").is_err());
        let huge = b".entry k(.param .b8 a[4294967295], .param .b8 b[4294967295]) { }";
        assert!(kernels(huge).is_err());
        let wide = b".entry k(.param .u64 a[4294967295]) { }";
        assert_eq!(kernels(wide).unwrap()[0].params, vec![]);
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

    /// Module globals as nvcc 13.0 writes them for sm_90 (`__device__ int ginit[4] = {1, 2, 3,
    /// -4}; __constant__ float cinit[2] = {1.5f, 2.5f}; ...`), among entries whose parameters
    /// and bodies mention `.global` and `.const` too.
    const PTX_GLOBALS: &str = r#"
.version 9.0
.target sm_90
.address_size 64
// .global .b8 commented[4];
.file 1 "/tmp/a;b.cu"
.global .align 4 .b8 ginit[16] = {1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 252, 255, 255, 255};
.const .align 4 .b8 cinit[8] = {0, 0, 192, 63, 0, 0, 32, 64};
.extern .global .align 4 .b8 elsewhere[64];
.global .align 8 .u64 gz;
.global .align 8 .f64 dd = 0d3FD0000000000000;
.const .align 2 .b8 cs[6];
/* .const .u32 hidden; */
.visible .global .align 16 .v4 .u32 vecs[2] = {{1, 2, 3, 4}, {5, 6, 7, 8}};
.global .align 4 .u32 open[] = {7, 8, 9};
.global .align 4 .f32 half = 0f3F000000;
.visible .entry k(
	.param .u64 .ptr .global .align 4 k_param_0
)
{
	.reg .b32 %r<4>;
	.shared .align 4 .b8 smem[64];
	{
	.reg .b32 inner;
	}
	ld.global.u32 %r1, [ginit];
	ld.const.u32 %r2, [cinit];
	ret;
}
.global .align 4 .s32 after = -2;
"#;

    #[test]
    fn ptx_globals_have_sizes_and_initial_bytes() {
        let m = module_info(PTX_GLOBALS.as_bytes()).unwrap();
        assert_eq!(m.kernels.len(), 1);
        assert_eq!(m.kernels[0].params, vec![(0, 8)]);
        let got: Vec<(&str, u64, &[u8])> = m
            .globals
            .iter()
            .map(|g| (g.name.as_str(), g.size, g.init.as_slice()))
            .collect();
        let vecs: Vec<u8> = (1u32..=8).flat_map(u32::to_le_bytes).collect();
        let open: Vec<u8> = [7u32, 8, 9]
            .into_iter()
            .flat_map(u32::to_le_bytes)
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "ginit",
                    16,
                    &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 252, 255, 255, 255][..]
                ),
                ("cinit", 8, &[0, 0, 192, 63, 0, 0, 32, 64][..]),
                ("gz", 8, &[][..]),
                ("dd", 8, &0.25f64.to_le_bytes()[..]),
                ("cs", 6, &[][..]),
                ("vecs", 32, &vecs[..]),
                ("open", 12, &open[..]),
                ("half", 4, &0.5f32.to_le_bytes()[..]),
                ("after", 4, &(-2i32).to_le_bytes()[..]),
            ]
        );
    }

    /// A little-endian ELF64 with the given sections (name, type, link, bytes or NOBITS size)
    /// and a symbol table of (name, st_info, section index, value, size).
    fn elf(
        sections: &[(&str, u32, Vec<u8>, u64)],
        symbols: &[(&str, u8, u16, u64, u64)],
    ) -> Vec<u8> {
        // Section 0 is null; the caller's sections follow, then .strtab, .symtab, .shstrtab.
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; ELF64_SYM_SIZE];
        for &(name, info, shndx, value, size) in symbols {
            symtab.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            symtab.push(info);
            symtab.push(0);
            symtab.extend_from_slice(&shndx.to_le_bytes());
            symtab.extend_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&size.to_le_bytes());
        }
        let n = sections.len() as u32;
        let mut all: Vec<(&str, u32, u32, Vec<u8>, u64)> = vec![("", 0, 0, vec![], 0)];
        all.extend(
            sections
                .iter()
                .map(|(name, ty, data, size)| (*name, *ty, 0, data.clone(), *size)),
        );
        all.push((".strtab", 3, 0, strtab, 0));
        all.push((".symtab", SHT_SYMTAB, n + 1, symtab, 0));
        all.push((".shstrtab", 3, 0, vec![], 0));
        let mut shstrtab = vec![0u8];
        let mut names = Vec::new();
        for s in &all {
            names.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(s.0.as_bytes());
            shstrtab.push(0);
        }
        let last = all.len() - 1;
        all[last].3 = shstrtab;
        let mut image = vec![0u8; 64];
        let mut headers = Vec::new();
        for (i, (_, ty, link, data, nobits)) in all.iter().enumerate() {
            let (offset, size) = (
                image.len() as u64,
                if *ty == SHT_NOBITS {
                    *nobits
                } else {
                    data.len() as u64
                },
            );
            image.extend_from_slice(data);
            headers.extend_from_slice(&names[i].to_le_bytes());
            headers.extend_from_slice(&ty.to_le_bytes());
            headers.extend_from_slice(&[0u8; 16]); // flags, addr
            headers.extend_from_slice(&offset.to_le_bytes());
            headers.extend_from_slice(&size.to_le_bytes());
            headers.extend_from_slice(&link.to_le_bytes());
            headers.extend_from_slice(&[0u8; 20]); // info, addralign, entsize
        }
        let shoff = image.len() as u64;
        image.extend_from_slice(&headers);
        image[..4].copy_from_slice(ELF_MAGIC);
        image[4] = 2;
        image[5] = 1;
        image[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        image[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        image[0x3c..0x3e].copy_from_slice(&(all.len() as u16).to_le_bytes());
        image[0x3e..0x40].copy_from_slice(&(last as u16).to_le_bytes());
        image
    }

    #[test]
    fn cubin_globals_are_data_objects_of_global_and_constant_sections() {
        const OBJECT: u8 = STT_OBJECT | 0x10; // global binding
        const LOCAL_OBJECT: u8 = STT_OBJECT;
        const FUNC: u8 = 2 | 0x10;
        let init: Vec<u8> = [1u8, 0, 0, 0, 2, 0, 0, 0]
            .into_iter()
            .chain([0xaa; 8])
            .collect();
        let image = elf(
            &[
                (".nv.global.init", 1, init, 0),
                (".nv.global", SHT_NOBITS, vec![], 16),
                (".nv.constant3", 1, (10u8..18).collect(), 0),
                (".nv.shared.k", SHT_NOBITS, vec![], 64),
                (".text.k", 1, vec![0; 16], 0),
            ],
            &[
                ("ginit", LOCAL_OBJECT, 1, 0, 8),
                ("gdbl", OBJECT, 1, 8, 8),
                ("gz", LOCAL_OBJECT, 2, 0, 16),
                ("cval", LOCAL_OBJECT, 3, 4, 4),
                // Past its section's bytes: what there is, the rest zeros.
                ("ctail", LOCAL_OBJECT, 3, 6, 4),
                ("smem", LOCAL_OBJECT, 4, 0, 64),
                ("k", FUNC, 5, 0, 16),
                ("undefined", OBJECT, 0, 0, 4),
                ("absolute", OBJECT, 0xfff1, 0, 4),
                ("empty", OBJECT, 1, 0, 0),
            ],
        );
        let m = module_info(&image).unwrap();
        assert_eq!(
            m.kernels,
            vec![KernelLayout {
                name: "k".into(),
                params: vec![]
            }]
        );
        let got: Vec<(&str, u64, &[u8])> = m
            .globals
            .iter()
            .map(|g| (g.name.as_str(), g.size, g.init.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ginit", 8, &[1, 0, 0, 0, 2, 0, 0, 0][..]),
                ("gdbl", 8, &[0xaa; 8][..]),
                ("gz", 16, &[][..]),
                ("cval", 4, &[14, 15, 16, 17][..]),
                ("ctail", 4, &[16, 17][..]),
            ]
        );
        // A symbol naming a section that does not exist is refused, not a panic.
        let image = elf(&[], &[("lost", OBJECT, 9, 0, 4)]);
        assert!(module_info(&image).is_err());
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

/// The fatbin containers a host executable embeds (its `.nv_fatbin` section).
pub fn embedded_fatbins(host: &[u8]) -> Result<Vec<&[u8]>, ImageError> {
    let sections = elf_sections(host)?;
    let section = sections
        .iter()
        .find(|s| s.name == b".nv_fatbin")
        .ok_or(ImageError::BadElf("no .nv_fatbin section"))?;
    let mut out = Vec::new();
    let mut rest = section.data;
    while let Some(len) = fatbin_len(rest).filter(|&l| l <= rest.len()) {
        out.push(&rest[..len]);
        rest = &rest[len.next_multiple_of(8).min(rest.len())..];
    }
    Ok(out)
}

/// The module of `tests/runtime/rt_constant.cu` (`__constant__ int ctable[256]; __constant__
/// float coef[4]; __device__ int gdata[1024]; __device__ unsigned long long gcounter;` and one
/// kernel) as nvcc 13.0 embeds it for sm_90 in the checked-in program (for tests: feature
/// `fixtures`).
#[cfg(any(test, feature = "fixtures"))]
pub fn rt_constant_fatbin() -> Vec<u8> {
    let host = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/runtime/rt_constant_shared"
    ))
    .expect("the rt_constant fixture");
    embedded_fatbins(&host)
        .expect("host ELF with a .nv_fatbin section")
        .into_iter()
        .find(|f| kernels(f).is_ok_and(|k| !k.is_empty()))
        .expect("a fatbin with the program's kernel")
        .to_vec()
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../tests/fixtures/{name}",
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
    fn test_kernels_have_no_globals() {
        for name in ["kernels.cubin", "kernels.ptx", "kernels.fatbin"] {
            assert_eq!(
                module_info(&fixture(name)).unwrap().globals,
                vec![],
                "{name}"
            );
        }
    }

    #[test]
    fn runtime_program_fatbin_lists_its_globals() {
        let image = rt_constant_fatbin();
        let m = module_info(&image).unwrap();
        assert_eq!(m.kernels.len(), 1);
        assert_eq!(m.kernels[0].name, "_Z5applyi");
        let mut got: Vec<(&str, u64, usize)> = m
            .globals
            .iter()
            .map(|g| (g.name.as_str(), g.size, g.init.len()))
            .collect();
        got.sort_unstable();
        // `__constant__`s live in bank 3, whose bytes (zeros) the cubin carries; `__device__`s
        // in .nv.global, which has none.
        assert_eq!(
            got,
            vec![
                ("coef", 16, 16),
                ("ctable", 1024, 1024),
                ("gcounter", 8, 0),
                ("gdata", 4096, 0),
            ]
        );
    }

    /// Every prefix of every fixture, and each with one length field made to lie, is
    /// refused or parsed, never a panic.
    #[test]
    fn malformed_images_are_refused_without_panicking() {
        for name in [
            "kernels.cubin",
            "kernels.fatbin",
            "kernels_compressed.fatbin",
        ] {
            let image = fixture(name);
            for cut in (0..image.len()).step_by(7) {
                let _ = module_info(&image[..cut]);
                let _ = fatbin::parse(&image[..cut]);
            }
            for at in (0..image.len().min(4096)).step_by(4) {
                let mut bad = image.clone();
                bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                let _ = module_info(&bad);
                if let Ok((off, len)) = elf_section_table(&bad)
                    && let Some(table) = bad.get(off..off.saturating_add(len))
                {
                    let _ = elf_len(&bad, table);
                }
            }
        }
    }

    #[test]
    fn fatbin_lengths_that_lie_are_refused() {
        let image = fixture("kernels_compressed.fatbin");
        // The container claims more bytes than there are.
        assert!(matches!(
            module_info(&image[..image.len() - 1]),
            Err(ImageError::Fatbin(FatbinError::Truncated(_)))
        ));
        // The compressed entry's stored size (u32 at entry offset 16) runs past the container.
        let mut lie = image.clone();
        lie[16 + 16..16 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            module_info(&lie),
            Err(ImageError::Fatbin(FatbinError::Entry(16, _)))
        ));
        // An entry header smaller than its fixed fields.
        let mut small = image.clone();
        small[16 + 4..16 + 8].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            module_info(&small),
            Err(ImageError::Fatbin(FatbinError::Entry(
                16,
                "header too small"
            )))
        ));
        // A truncated container header.
        assert!(matches!(
            module_info(&image[..12]),
            Err(ImageError::Fatbin(FatbinError::Truncated("header")))
        ));
    }

    #[test]
    fn elf_length_comes_from_its_headers() {
        let cubin = fixture("kernels.cubin");
        let (off, len) = elf_section_table(&cubin).unwrap();
        assert_eq!(elf_len(&cubin, &cubin[off..off + len]), Ok(cubin.len()));
        // A section whose contents end past the address space is refused.
        let mut bad = cubin.clone();
        let first = off + 64; // section 1's header
        bad[first + 0x18..first + 0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(elf_len(&bad, &bad[off..off + len]).is_err());
        // The table must be all there.
        assert!(elf_len(&cubin, &cubin[off..off + len - 1]).is_err());
        assert!(elf_section_table(b"\x7fELF\x01\x01").is_err());
        assert!(elf_section_table(&cubin[..0x30]).is_err());
    }

    #[test]
    fn compressed_fatbin_is_reported_as_such() {
        let image = fixture("kernels_compressed.fatbin");
        assert_eq!(fatbin_len(&image), Some(image.len()));
        assert_eq!(kernels(&image), Err(ImageError::Compressed));
    }
}
