//! tracefs: where tracepoints are listed and their record layouts described.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, bail};
use lotrace_common::config::TP_DATA_LOC;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at [`TRACEFS`], mounting it when it is not.
/// Returns true when this call mounted it.
pub fn ensure_mounted() -> Result<bool> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    if !Path::new(TRACEFS).is_dir() {
        bail!(
            "tracefs has no mount point: {TRACEFS} does not exist (is this kernel built with CONFIG_TRACING?)"
        );
    }
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are to NUL-terminated static strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}); mount it with `mount -t tracefs nodev {TRACEFS}`"
        );
    }
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!("tracefs mounted at {TRACEFS} but it has no events/ directory");
    }
    Ok(true)
}

/// Does `category:name` exist on this kernel?
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format")
        .is_file()
}

/// Reads the field offsets of a tracepoint from its `format` file.
pub fn field_offsets(category: &str, name: &str) -> Result<HashMap<String, u16>> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_format(&text)
}

/// Parses a tracepoint `format` file into field name → byte offset, with
/// [`TP_DATA_LOC`] set on a `__data_loc` field (its data is elsewhere in
/// the record).
pub fn parse_format(text: &str) -> Result<HashMap<String, u16>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset =
                    Some(v.trim().parse::<u16>().with_context(|| {
                        format!("bad offset in tracepoint format line: {line}")
                    })?);
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset)) = (decl, offset) else {
            bail!("malformed tracepoint format line: {line}");
        };
        // The name is the declaration's last word, without an array suffix.
        let last = decl.split_whitespace().last().unwrap_or("");
        let name = last.split('[').next().unwrap_or("").trim_start_matches('*');
        if name.is_empty() {
            bail!("malformed tracepoint format line: {line}");
        }
        if offset & TP_DATA_LOC != 0 {
            bail!("tracepoint field offset {offset} too large: {line}");
        }
        let loc = if decl.starts_with("__data_loc ") {
            TP_DATA_LOC
        } else {
            0
        };
        out.insert(name.to_string(), offset | loc);
    }
    if out.is_empty() {
        bail!("tracepoint format has no fields");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV_XMIT: &str = "name: net_dev_xmit
ID: 1687
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned int len;\toffset:16;\tsize:4;\tsigned:0;
\tfield:int rc;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;
\tfield:u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;

print fmt: \"dev=%s skbaddr=%p len=%u rc=%d\", __get_str(name), REC->skbaddr, REC->len, REC->rc
";

    #[test]
    fn parses_offsets() {
        let f = parse_format(NET_DEV_XMIT).unwrap();
        assert_eq!(f["skbaddr"], 8);
        assert_eq!(f["len"], 16);
        assert_eq!(f["rc"], 20);
        assert_eq!(f["name"], 24 | TP_DATA_LOC);
        assert_eq!(f["saddr"], 28);
        assert_eq!(f["common_pid"], 4);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_format("nothing here").is_err());
        assert!(parse_format("\tfield:int x;\toffset:zz;\tsize:4;").is_err());
    }
}
