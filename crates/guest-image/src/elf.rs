//! What the image needs to know from ELF files: a program's loader and shared libraries
//! (`DT_NEEDED`), and a kernel module's `.modinfo` (its dependencies).

use object::elf::{FileHeader64, DT_NEEDED};
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

#[derive(Debug, thiserror::Error)]
#[error("not a readable 64-bit ELF file")]
pub struct ElfError(#[source] object::read::Error);

impl From<object::read::Error> for ElfError {
    fn from(error: object::read::Error) -> Self {
        Self(error)
    }
}

/// The dynamic-linking facts of an executable or shared library.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`; `None` for static programs.
    pub interpreter: Option<String>,
    /// Library names (`DT_NEEDED`), e.g. `libc.so.6`.
    pub needed: Vec<String>,
}

pub fn dynamic(data: &[u8]) -> Result<Dynamic, ElfError> {
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let mut found = Dynamic::default();
    for segment in header.program_headers(endian, data)? {
        if let Some(interp) = segment.interpreter(endian, data)? {
            found.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data)?;
    if let Some((entries, strings_index)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, strings_index)?;
        for entry in entries {
            if entry.tag32(endian) == Some(DT_NEEDED) {
                let name = entry.string(endian, strings)?;
                found
                    .needed
                    .push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(found)
}

/// `key=value` pairs of a kernel module's `.modinfo` section.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let Some((_, section)) = sections.section_by_name(endian, b".modinfo") else {
        return Ok(Vec::new());
    };
    let bytes = section.data(endian, data)?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loader_and_libraries_of_this_test_binary() {
        let exe = std::env::current_exe().expect("exe");
        let data = std::fs::read(exe).expect("read");
        let found = dynamic(&data).expect("elf");
        // Rust test binaries on glibc link libc dynamically.
        assert!(
            found.needed.iter().any(|n| n.starts_with("libc.so")),
            "{found:?}"
        );
        assert!(found.interpreter.is_some(), "{found:?}");
        assert!(modinfo(&data).expect("no modinfo is fine").is_empty());
        assert!(dynamic(b"#!/bin/sh\n").is_err());
    }
}
