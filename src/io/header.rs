//! The `.npy` header: a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`, parsed by
//! a small recursive-descent reader that never slices out of bounds.

/// A dtype the reader converts to f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
}

/// A validated header. `dtype` is `None` for a descr we do not read (the
/// caller names it in its error).
#[derive(Debug)]
pub(crate) struct Header {
    pub descr: String,
    pub dtype: Option<Dtype>,
    pub big_endian: bool,
    pub fortran: bool,
    pub shape: Vec<usize>,
}

impl Header {
    pub fn width(&self) -> usize {
        match self.dtype {
            Some(Dtype::F16 | Dtype::Bf16) => 2,
            Some(Dtype::F32) | None => 4,
            Some(Dtype::F64) => 8,
        }
    }
    /// The product of the shape; `None` on overflow.
    pub fn values(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
    pub fn data_bytes(&self) -> Option<usize> {
        self.values()?.checked_mul(self.width())
    }
}

fn dtype_of(descr: &str) -> Option<(Dtype, bool)> {
    Some(match descr {
        "<f4" | "=f4" => (Dtype::F32, false),
        ">f4" => (Dtype::F32, true),
        "<f2" | "=f2" => (Dtype::F16, false),
        ">f2" => (Dtype::F16, true),
        "<f8" | "=f8" => (Dtype::F64, false),
        ">f8" => (Dtype::F64, true),
        "<V2" | "|V2" | "bfloat16" | "<bfloat16" => (Dtype::Bf16, false),
        _ => return None,
    })
}

enum Val {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.i += 1;
        }
        hit
    }
    fn expect(&mut self, c: u8, what: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "the header has {} at byte {} where {what} was expected",
                self.found(),
                self.i
            ))
        }
    }
    fn found(&self) -> String {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() => format!("`{}`", c as char),
            Some(c) => format!("byte 0x{c:02x}"),
            None => "its end".into(),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string, found {}", self.found())),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == q {
                let s = std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| "the header is not UTF-8 text".to_string())?;
                self.i += 1;
                return Ok(s.to_string());
            }
            if c == b'\\' {
                return Err("the header has an escape in a string; expected plain keys".into());
            }
            self.i += 1;
        }
        Err("the header ends inside a string".into())
    }
    fn int(&mut self) -> Result<usize, String> {
        let mut n: usize = 0;
        let start = self.i;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or("a shape dimension does not fit in 64 bits")?;
            self.i += 1;
        }
        if self.i == start {
            return Err(format!(
                "expected a non-negative integer in 'shape', found {}",
                self.found()
            ));
        }
        self.eat(b'L'); // Python 2's long suffix
        Ok(n)
    }
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        let mut dims = Vec::new();
        self.ws();
        while !self.eat(b')') {
            if dims.len() == 32 {
                return Err("'shape' has more than 32 dimensions (numpy's limit)".into());
            }
            dims.push(self.int()?);
            self.ws();
            if !self.eat(b',') {
                self.expect(b')', "`,` or `)`")?;
                break;
            }
            self.ws();
        }
        Ok(dims)
    }
    fn value(&mut self) -> Result<Val, String> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Val::Str),
            Some(b'(') => {
                self.i += 1;
                self.tuple().map(Val::Tuple)
            }
            _ if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Ok(Val::Bool(true))
            }
            _ if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Ok(Val::Bool(false))
            }
            _ => Err(format!(
                "expected a string, True, False or a tuple, found {}",
                self.found()
            )),
        }
    }
}

const KEYS: &str = "exactly 'descr', 'fortran_order' and 'shape'";

/// Parses and checks a header dict: exactly the three keys, each once,
/// with the right types. The dtype and rank are the caller's to judge.
pub(crate) fn parse_header(text: &[u8]) -> Result<Header, String> {
    let mut p = P { s: text, i: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.ws();
    p.expect(b'{', "`{`")?;
    p.ws();
    while !p.eat(b'}') {
        let key = p.string()?;
        p.ws();
        p.expect(b':', "`:`")?;
        p.ws();
        let val = p.value().map_err(|e| format!("'{key}': {e}"))?;
        let slot_taken = match (key.as_str(), val) {
            ("descr", Val::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Val::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", Val::Tuple(t)) => shape.replace(t).is_some(),
            ("descr", _) => return Err("'descr' is not a dtype string such as '<f4'".into()),
            ("fortran_order", _) => return Err("'fortran_order' is neither True nor False".into()),
            ("shape", _) => return Err("'shape' is not a tuple of integers".into()),
            (k, _) => return Err(format!("unexpected key '{k}'; a header holds {KEYS}")),
        };
        if slot_taken {
            return Err(format!(
                "the header repeats the key '{key}'; expected {KEYS}, each once"
            ));
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}', "`,` or `}`")?;
            break;
        }
        p.ws();
    }
    p.ws();
    if p.i != text.len() {
        return Err(format!(
            "the header has {} at byte {} after the closing `}}`",
            p.found(),
            p.i
        ));
    }
    let descr = descr.ok_or("the header has no 'descr'")?;
    let fortran = fortran.ok_or("the header has no 'fortran_order'")?;
    let shape = shape.ok_or("the header has no 'shape'")?;
    let (dtype, big_endian) = match dtype_of(&descr) {
        Some((d, b)) => (Some(d), b),
        None => (None, false),
    };
    Ok(Header {
        descr,
        dtype,
        big_endian,
        fortran,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_numpy_writes_and_refuses_the_rest() {
        let h = parse_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n")
            .unwrap();
        assert_eq!(
            (h.shape.clone(), h.fortran, h.dtype),
            (vec![3, 4], false, Some(Dtype::F32))
        );
        let h =
            parse_header(br#"{"shape": (5L,), "descr": ">f8", "fortran_order": True}"#).unwrap();
        assert_eq!((h.shape, h.big_endian), (vec![5], true));
        for (bad, what) in [
            (
                &b"{'descr': '<f4', 'fortran_order': False, 'shape': )3, 4(}"[..],
                "tuple",
            ),
            (
                b"{'descr': '<f4', 'descr': '<f2', 'fortran_order': False, 'shape': (1,)}",
                "repeats",
            ),
            (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                "string, True",
            ),
            (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 'y'}",
                "unexpected key",
            ),
            (b"{'descr': '<f4', 'fortran_order': False}", "no 'shape'"),
            (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
                "64 bits",
            ),
            (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2",
                "`,` or `)`",
            ),
            (b"{'descr': '<f4'", "`,` or `}`"),
            (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x",
                "after the closing",
            ),
        ] {
            let e = parse_header(bad).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }
}
