//! A structural check of a baseline JPEG's entropy-coded data, the check
//! libjpeg (and so Pillow) makes while decoding: every block's Huffman codes
//! must be valid, the data must hold exactly the blocks the frame header
//! promises (no marker before the last one, no bytes left over after it),
//! and restart markers must come in order.
//!
//! zune-jpeg, the decoder behind `image`, fills what it cannot read with
//! zeros and says nothing, even in strict mode, when the data ends early
//! at an end marker: a frame header claiming 15000 x 15000 pixels for a
//! 423 x 320 photo, or garbage overwriting the middle of the data (after
//! which the decoder reads codes out of step and runs out, or stops short),
//! decode without an error. Nothing is decoded here beyond the Huffman
//! codes: no coefficients, no pixels.
//!
//! Progressive and arithmetic-coded JPEGs are not checked (`Ok`): their
//! scans refine one another and need a full decoder to follow.

/// Checks a JPEG file's bytes; `Err` says what is wrong. Anything that is
/// not a baseline (Huffman, sequential) JPEG passes unchecked.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let mut parser = Parser {
        bytes,
        pos: 2,
        tables: Default::default(),
        dc_quant: [1; 4],
        frame: None,
        restart_interval: 0,
    };
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    loop {
        let Some(marker) = parser.next_marker() else {
            // The end of the file before EOI: the truncation check says so.
            return Ok(());
        };
        match marker {
            0xD9 => return Ok(()),
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let segment = parser.segment()?;
        match marker {
            // Baseline and extended sequential, Huffman-coded.
            0xC0 | 0xC1 => parser.frame = Some(Frame::parse(segment)?),
            // Progressive, lossless, arithmetic-coded: not followed here.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xC4 => parser.tables.parse(segment)?,
            0xDB => parser.quant_tables(segment)?,
            0xDD => {
                if segment.len() < 2 {
                    return Err("restart interval segment too short".into());
                }
                parser.restart_interval = u16::from_be_bytes([segment[0], segment[1]]) as usize;
            }
            0xDA => parser.scan(segment)?,
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    /// Quantisation table index.
    tq: usize,
}

struct Frame {
    width: usize,
    height: usize,
    components: Vec<Component>,
}

impl Frame {
    fn parse(s: &[u8]) -> Result<Frame, String> {
        if s.len() < 6 {
            return Err("frame header too short".into());
        }
        let height = u16::from_be_bytes([s[1], s[2]]) as usize;
        let width = u16::from_be_bytes([s[3], s[4]]) as usize;
        let n = s[5] as usize;
        if s.len() < 6 + 3 * n || n == 0 {
            return Err("frame header too short for its components".into());
        }
        let components = (0..n)
            .map(|i| {
                let c = &s[6 + 3 * i..9 + 3 * i];
                Component {
                    id: c[0],
                    h: (c[1] >> 4).max(1) as usize,
                    v: (c[1] & 15).max(1) as usize,
                    tq: (c[2] & 3) as usize,
                }
            })
            .collect();
        Ok(Frame {
            width,
            height,
            components,
        })
    }

    fn max_sampling(&self) -> (usize, usize) {
        let h = self.components.iter().map(|c| c.h).max().unwrap_or(1);
        let v = self.components.iter().map(|c| c.v).max().unwrap_or(1);
        (h, v)
    }
}

/// A canonical Huffman table: per code length, the largest code and where
/// that length's symbols start.
#[derive(Clone)]
struct Huffman {
    max_code: [i32; 17],
    offset: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8], symbols: &[u8]) -> Huffman {
        let (mut max_code, mut offset) = ([-1i32; 17], [0i32; 17]);
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = counts[len - 1] as i32;
            offset[len] = k - code;
            if n > 0 {
                code += n;
                k += n;
                max_code[len] = code - 1;
            }
            code <<= 1;
        }
        Huffman {
            max_code,
            offset,
            symbols: symbols.to_vec(),
        }
    }
}

#[derive(Default)]
struct Tables {
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
}

impl Tables {
    fn parse(&mut self, mut s: &[u8]) -> Result<(), String> {
        while !s.is_empty() {
            if s.len() < 17 {
                return Err("Huffman table segment too short".into());
            }
            let (class, id) = (s[0] >> 4, (s[0] & 15) as usize);
            let counts = &s[1..17];
            let n: usize = counts.iter().map(|&c| c as usize).sum();
            if s.len() < 17 + n || id > 3 || class > 1 {
                return Err("malformed Huffman table".into());
            }
            let table = Huffman::new(counts, &s[17..17 + n]);
            if class == 0 {
                self.dc[id] = Some(table);
            } else {
                self.ac[id] = Some(table);
            }
            s = &s[17 + n..];
        }
        Ok(())
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    tables: Tables,
    /// The DC step of each quantisation table.
    dc_quant: [i32; 4],
    frame: Option<Frame>,
    restart_interval: usize,
}

impl<'a> Parser<'a> {
    /// The next marker at or after `pos` (fill bytes skipped), or `None` at
    /// the end of the file.
    fn next_marker(&mut self) -> Option<u8> {
        while self.pos + 1 < self.bytes.len() {
            if self.bytes[self.pos] == 0xFF && !matches!(self.bytes[self.pos + 1], 0x00 | 0xFF) {
                let m = self.bytes[self.pos + 1];
                self.pos += 2;
                return Some(m);
            }
            self.pos += 1;
        }
        None
    }

    /// Reads the DC step of each quantisation table in a DQT segment.
    fn quant_tables(&mut self, mut s: &[u8]) -> Result<(), String> {
        while !s.is_empty() {
            let (wide, id) = (s[0] >> 4 != 0, (s[0] & 3) as usize);
            let len = if wide { 129 } else { 65 };
            if s.len() < len {
                return Err("quantisation table segment too short".into());
            }
            self.dc_quant[id] = if wide {
                u16::from_be_bytes([s[1], s[2]]) as i32
            } else {
                s[1] as i32
            };
            s = &s[len..];
        }
        Ok(())
    }

    /// The payload of the segment starting at `pos` (after its marker).
    fn segment(&mut self) -> Result<&'a [u8], String> {
        let b = self.bytes;
        if self.pos + 2 > b.len() {
            return Err("segment length cut off".into());
        }
        let len = u16::from_be_bytes([b[self.pos], b[self.pos + 1]]) as usize;
        if len < 2 || self.pos + len > b.len() {
            return Err("segment runs past the end of the file".into());
        }
        let s = &b[self.pos + 2..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    /// Walks one scan's entropy-coded data, block by block, and leaves
    /// `pos` at the marker that ends it.
    fn scan(&mut self, s: &[u8]) -> Result<(), String> {
        let Some(frame) = &self.frame else {
            return Err("scan before the frame header".into());
        };
        let n = *s.first().ok_or("scan header too short")? as usize;
        if s.len() < 1 + 2 * n + 3 || n == 0 {
            return Err("scan header too short".into());
        }
        // Per component in the scan: its blocks per MCU (h, v) and tables.
        let mut members = Vec::new();
        for i in 0..n {
            let (id, t) = (s[1 + 2 * i], s[2 + 2 * i]);
            let c = frame
                .components
                .iter()
                .find(|c| c.id == id)
                .ok_or_else(|| format!("scan names component {id}, which the frame lacks"))?;
            let dc = self.tables.dc[(t >> 4) as usize & 3]
                .as_ref()
                .ok_or("scan uses a DC table that is not defined")?;
            let ac = self.tables.ac[(t & 15) as usize & 3]
                .as_ref()
                .ok_or("scan uses an AC table that is not defined")?;
            members.push((*c, dc, ac));
        }
        let (hmax, vmax) = frame.max_sampling();
        let (blocks_per_mcu, mcus): (Vec<usize>, usize) = if n == 1 {
            // Non-interleaved: one block per MCU, over the component's own
            // (sub-sampled) size.
            let c = members[0].0;
            let w = (frame.width * c.h).div_ceil(hmax);
            let h = (frame.height * c.v).div_ceil(vmax);
            (vec![1], w.div_ceil(8) * h.div_ceil(8))
        } else {
            (
                members.iter().map(|m| m.0.h * m.0.v).collect(),
                frame.width.div_ceil(8 * hmax) * frame.height.div_ceil(8 * vmax),
            )
        };
        let mut bits = Bits {
            bytes: self.bytes,
            pos: self.pos,
            acc: 0,
            count: 0,
        };
        let mut dc_pred = vec![0i32; members.len()];
        for mcu in 0..mcus {
            if self.restart_interval > 0 && mcu > 0 && mcu % self.restart_interval == 0 {
                let expected = 0xD0 + ((mcu / self.restart_interval - 1) % 8) as u8;
                bits.restart(expected, mcu, mcus)?;
                dc_pred.iter_mut().for_each(|p| *p = 0);
            }
            for (((c, dc, ac), &blocks), pred) in
                members.iter().zip(&blocks_per_mcu).zip(&mut dc_pred)
            {
                let step = self.dc_quant[c.tq].max(1);
                for _ in 0..blocks {
                    *pred += bits
                        .block(dc, ac)
                        .map_err(|e| format!("{e} at MCU {mcu} of {mcus}"))?;
                    // An 8-bit block's mean level is -128..127, so its DC
                    // coefficient lies in -1024..1016 (one step of rounding
                    // either way); data read out of step drifts past it.
                    if (*pred * step).abs() > 1024 + step {
                        return Err(format!(
                            "a block's mean level out of range at MCU {mcu} of {mcus}"
                        ));
                    }
                }
            }
        }
        bits.end()?;
        self.pos = bits.pos;
        Ok(())
    }
}

/// A bit reader over entropy-coded data: stuffed zero bytes removed, and a
/// marker is the end of the data (never read past).
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u32,
    count: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, String> {
        if self.count == 0 {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or("the data ends before the last block")?;
            if b == 0xFF {
                match self.bytes.get(self.pos + 1) {
                    Some(0x00) => self.pos += 1,
                    Some(&m) => {
                        return Err(format!(
                            "marker 0xFF{m:02X} before the last block (premature end of data)"
                        ))
                    }
                    None => return Err("the data ends before the last block".into()),
                }
            }
            self.pos += 1;
            self.acc = b as u32;
            self.count = 8;
        }
        self.count -= 1;
        Ok((self.acc >> self.count) & 1)
    }

    fn bits(&mut self, n: u32) -> Result<(), String> {
        for _ in 0..n {
            self.bit()?;
        }
        Ok(())
    }

    /// An `n`-bit signed value (JPEG's "receive and extend").
    fn value(&mut self, n: u32) -> Result<i32, String> {
        let mut v = 0i32;
        for _ in 0..n {
            v = (v << 1) | self.bit()? as i32;
        }
        Ok(if n > 0 && v < 1 << (n - 1) {
            v - (1 << n) + 1
        } else {
            v
        })
    }

    fn symbol(&mut self, table: &Huffman) -> Result<u8, String> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bit()? as i32;
            if code <= table.max_code[len] {
                let i = (code + table.offset[len]) as usize;
                return table
                    .symbols
                    .get(i)
                    .copied()
                    .ok_or_else(|| "invalid Huffman code".to_string());
            }
        }
        Err("invalid Huffman code".into())
    }

    /// One 8x8 block: a DC difference (returned) and up to 63 AC
    /// coefficients.
    fn block(&mut self, dc: &Huffman, ac: &Huffman) -> Result<i32, String> {
        let s = self.symbol(dc)?;
        if s > 11 {
            return Err(format!("DC difference of {s} bits"));
        }
        let diff = self.value(s as u32)?;
        let mut k = 1;
        while k < 64 {
            let rs = self.symbol(ac)?;
            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
            if s == 0 {
                if r != 15 {
                    return Ok(diff);
                }
                k += 16;
            } else {
                k += r;
                self.bits(s)?;
                k += 1;
            }
        }
        if k > 64 {
            return Err("AC coefficients past the end of the block".into());
        }
        Ok(diff)
    }

    /// The restart marker due before MCU `mcu`: the partial byte is dropped,
    /// and the next bytes must be that marker.
    fn restart(&mut self, expected: u8, mcu: usize, mcus: usize) -> Result<(), String> {
        self.count = 0;
        let at = self.pos;
        let b = self.bytes;
        if at + 1 < b.len() && b[at] == 0xFF && b[at + 1] == expected {
            self.pos += 2;
            return Ok(());
        }
        Err(format!(
            "restart marker 0xFF{expected:02X} missing before MCU {mcu} of {mcus}"
        ))
    }

    /// After the last block: the partial byte is padding, and the next
    /// bytes must be a marker (fill bytes 0xFF allowed).
    fn end(&mut self) -> Result<(), String> {
        self.count = 0;
        let rest = &self.bytes[self.pos..];
        let extra = rest
            .windows(2)
            .position(|w| w[0] == 0xFF && !matches!(w[1], 0x00 | 0xFF))
            .unwrap_or(rest.len());
        let fill = rest[..extra]
            .iter()
            .rev()
            .take_while(|&&b| b == 0xFF)
            .count();
        if extra - fill > 0 {
            return Err(format!(
                "{} bytes of data after the last block (the data does not match the frame header)",
                extra - fill
            ));
        }
        Ok(())
    }
}
