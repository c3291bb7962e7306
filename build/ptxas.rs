//! Parsing `nvcc -Xptxas -v` output: registers, stack and spills per function and architecture.

/// One function as ptxas reported it for one architecture.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// The source file under cuda/, e.g. `routing/gate.cu`.
    pub source: String,
    pub arch: String,
    /// The name as ptxas printed it (mangled for C++ functions).
    pub function: String,
    pub registers: u32,
    pub stack: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

impl Usage {
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// The first number in `s` after `key`'s position is searched backwards: `N bytes spill stores`.
fn number_before(s: &str, key: &str) -> Option<u32> {
    let head = s[..s.find(key)?].trim_end();
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

fn quoted(s: &str) -> Option<&str> {
    let a = s.find('\'')? + 1;
    let b = a + s[a..].find('\'')?;
    Some(&s[a..b])
}

/// Parses the ptxas lines of one compilation of `source`. nvcc 13 prints, per function and arch:
///
/// ```text
/// ptxas info    : Compiling entry function '_ZN6capmoe11gate_kernelILi1EEEvPKfiiiPfPiS3_' for 'sm_90a'
/// ptxas info    : Function properties for _ZN6capmoe11gate_kernelILi1EEEvPKfiiiPfPiS3_
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 26 registers, used 0 barriers, 400 bytes cmem[0]
/// ```
///
/// Non-inlined device functions get their own "Function properties" block (counted too).
pub fn parse(source: &str, lines: &[String]) -> Vec<Usage> {
    let mut out: Vec<Usage> = Vec::new();
    let mut arch = String::new();
    for line in lines {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("ptxas info    : Compiling entry function") {
            // `'name' for 'sm_90a'`
            if let Some(i) = rest.find(" for ") {
                arch = quoted(&rest[i..]).unwrap_or_default().to_string();
            }
        } else if l.contains("Function properties for ") {
            let name = l
                .rsplit("Function properties for ")
                .next()
                .unwrap_or_default();
            out.push(Usage {
                source: source.into(),
                arch: arch.clone(),
                function: name.trim().to_string(),
                ..Usage::default()
            });
        } else if l.contains("bytes stack frame") {
            if let Some(u) = out.last_mut() {
                u.stack = number_before(l, " bytes stack frame").unwrap_or(0);
                u.spill_stores = number_before(l, " bytes spill stores").unwrap_or(0);
                u.spill_loads = number_before(l, " bytes spill loads").unwrap_or(0);
            }
        } else if l.starts_with("ptxas info    : Used ") {
            if let Some(u) = out.last_mut() {
                u.registers = number_before(l, " registers").unwrap_or(0);
            }
        }
    }
    out
}

/// A readable name for the table: `_ZN6capmoe11gate_kernelILi1EEEvPKf...` -> `capmoe::gate_kernel<..>`.
/// Only the Itanium nested-name prefix is decoded; the mangled name stays in ptxas.txt.
pub fn short_name(mangled: &str) -> String {
    let Some(rest) = mangled.strip_prefix("_Z") else {
        return mangled.to_string();
    };
    let (nested, mut s) = match rest.strip_prefix('N') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let mut parts: Vec<&str> = Vec::new();
    loop {
        let digits = s.chars().take_while(char::is_ascii_digit).count();
        let Ok(len) = s[..digits].parse::<usize>() else {
            break;
        };
        if s.len() < digits + len {
            break;
        }
        let part = &s[digits..digits + len];
        if !part.starts_with("CUB_") {
            parts.push(part); // cub's versioned inline namespace says nothing here
        }
        s = &s[digits + len..];
        if !nested {
            break;
        }
    }
    if parts.is_empty() {
        return mangled.to_string();
    }
    let templ = if s.starts_with('I') { "<..>" } else { "" };
    format!("{}{templ}", parts.join("::"))
}

/// A compact fixed-width table, one row per function and architecture.
pub fn table(rows: &[&Usage]) -> Vec<String> {
    let w = rows
        .iter()
        .map(|u| u.source.len())
        .max()
        .unwrap_or(0)
        .max(22);
    let mut out = vec![format!(
        "{:<w$} {:<7} {:<52} {:>4} {:>6} {:>8} {:>8}",
        "source", "arch", "function", "regs", "stack", "spill-st", "spill-ld"
    )];
    for u in rows {
        let mut name = short_name(&u.function);
        if name.len() > 52 {
            name.truncate(49);
            name.push_str("...");
        }
        out.push(format!(
            "{:<w$} {:<7} {:<52} {:>4} {:>6} {:>8} {:>8}",
            u.source, u.arch, name, u.registers, u.stack, u.spill_stores, u.spill_loads
        ));
    }
    out
}
