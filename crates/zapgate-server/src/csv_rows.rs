//! A CSV reader fed chunk by chunk (a request body as it streams in), on
//! `csv-core`: memory is one record, never the file — a record is at most
//! 64 KiB of input and 256 fields. The delimiter is `,` or `;` (what
//! spreadsheets in Brazil save), told from the header line. Text that is
//! not UTF-8 is read as Windows-1252, what Excel saves in Brazil.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

/// The longest record accepted: far above any recipient row, far below
/// anything that could hurt.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
pub const MAX_FIELDS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("row {0} is longer than 64 KiB")]
    RecordTooLong(u64),
    #[error("row {0} has more than 256 fields")]
    TooManyFields(u64),
    #[error("the header line is longer than 64 KiB")]
    HeaderTooLong,
}

pub struct CsvRows {
    /// Bytes seen before the first newline (the delimiter is not known yet).
    sniff: Vec<u8>,
    reader: Option<Reader>,
    out: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    /// Input bytes of the record being read (empty fields fill no output).
    record_bytes: usize,
    records: u64,
}

impl Default for CsvRows {
    fn default() -> Self {
        Self {
            sniff: Vec::new(),
            reader: None,
            out: vec![0; 1024],
            ends: vec![0; 32],
            out_len: 0,
            ends_len: 0,
            record_bytes: 0,
            records: 0,
        }
    }
}

impl CsvRows {
    /// Feeds the next chunk; complete records are appended to `rows`.
    pub fn push(&mut self, chunk: &[u8], rows: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        if self.reader.is_none() {
            self.sniff.extend_from_slice(chunk);
            if !self.sniff.contains(&b'\n') {
                return if self.sniff.len() > MAX_RECORD_BYTES { Err(CsvError::HeaderTooLong) } else { Ok(()) };
            }
            let sniffed = std::mem::take(&mut self.sniff);
            self.start(&sniffed);
            return self.read(&sniffed, false, rows);
        }
        self.read(chunk, false, rows)
    }

    /// Ends the input: the last record, if it had no newline.
    pub fn finish(&mut self, rows: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        if self.reader.is_none() {
            let sniffed = std::mem::take(&mut self.sniff);
            self.start(&sniffed);
            self.read(&sniffed, false, rows)?;
        }
        self.read(&[], true, rows)
    }

    fn start(&mut self, head: &[u8]) {
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let count = |d: u8| line.iter().filter(|b| **b == d).count();
        let delimiter = if count(b';') > count(b',') { b';' } else { b',' };
        self.reader = Some(ReaderBuilder::new().delimiter(delimiter).build());
    }

    fn read(&mut self, mut input: &[u8], eof: bool, rows: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        let Some(reader) = self.reader.as_mut() else { return Ok(()) };
        loop {
            let (result, nin, nout, nend) =
                reader.read_record(input, &mut self.out[self.out_len..], &mut self.ends[self.ends_len..]);
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            self.record_bytes += nin;
            if self.record_bytes > MAX_RECORD_BYTES && result != ReadRecordResult::Record {
                return Err(CsvError::RecordTooLong(self.records + 1));
            }
            match result {
                ReadRecordResult::InputEmpty if !eof => return Ok(()),
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    if self.out.len() >= MAX_RECORD_BYTES {
                        return Err(CsvError::RecordTooLong(self.records + 1));
                    }
                    self.out.resize(self.out.len() * 2, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() >= MAX_FIELDS {
                        return Err(CsvError::TooManyFields(self.records + 1));
                    }
                    self.ends.resize(self.ends.len() * 2, 0);
                }
                ReadRecordResult::Record => {
                    self.records += 1;
                    let mut fields = Vec::with_capacity(self.ends_len);
                    let mut start = 0;
                    for &end in &self.ends[..self.ends_len] {
                        fields.push(text(&self.out[start..end]).trim().to_owned());
                        start = end;
                    }
                    self.out_len = 0;
                    self.ends_len = 0;
                    self.record_bytes = 0;
                    // A blank line is no row.
                    if !(fields.len() == 1 && fields[0].is_empty()) {
                        rows.push(fields);
                    }
                }
                ReadRecordResult::End => return Ok(()),
            }
        }
    }
}

/// UTF-8 if it is, else Windows-1252 (every byte a character).
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| windows_1252(b)).collect(),
    }
}

fn windows_1252(b: u8) -> char {
    // 0x80–0x9F differ from Latin-1; the five unassigned bytes keep their C1 code.
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(input: &str, chunk: usize) -> Vec<Vec<String>> {
        let mut csv = CsvRows::default();
        let mut rows = Vec::new();
        for c in input.as_bytes().chunks(chunk) {
            csv.push(c, &mut rows).unwrap();
        }
        csv.finish(&mut rows).unwrap();
        rows
    }

    #[test]
    fn rows_come_out_the_same_however_the_input_is_cut() {
        let input = "to,name,amount\n+5511999990001,\"Silva, Ana\",10\r\n\n+5511999990002,Bia,\"2\"\"0\"\n+5511999990003,Caio,30";
        let whole = parse_in_chunks(input, input.len());
        assert_eq!(
            whole,
            [
                vec!["to", "name", "amount"],
                vec!["+5511999990001", "Silva, Ana", "10"],
                vec!["+5511999990002", "Bia", "2\"0"],
                vec!["+5511999990003", "Caio", "30"],
            ]
        );
        for chunk in [1, 2, 3, 7, 16] {
            assert_eq!(parse_in_chunks(input, chunk), whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn semicolons_are_the_delimiter_when_the_header_says_so() {
        let rows = parse_in_chunks("telefone;nome;valor\n11999990001;Ana;10,50\n", 5);
        assert_eq!(rows[1], ["11999990001", "Ana", "10,50"]);
    }

    #[test]
    fn windows_1252_text_is_read_as_such() {
        let mut csv = CsvRows::default();
        let mut rows = Vec::new();
        csv.push(b"to;name\n+5511999990001;Jos\xe9 \x80\n+5511999990002;Jos\xc3\xa9\n", &mut rows).unwrap();
        csv.finish(&mut rows).unwrap();
        assert_eq!(rows[1][1], "José €");
        assert_eq!(rows[2][1], "José", "UTF-8 stays UTF-8");
    }

    #[test]
    fn many_empty_fields_are_refused_without_growing() {
        let mut csv = CsvRows::default();
        let mut rows = Vec::new();
        csv.push(b"to,name\n", &mut rows).unwrap();
        assert_eq!(csv.push(&[b','; 10_000], &mut rows), Err(CsvError::TooManyFields(2)));
        let mut csv = CsvRows::default();
        csv.push(b"to;name\n", &mut rows).unwrap();
        let mut long = vec![b' '; 70_000];
        long.push(b'x');
        assert_eq!(csv.push(&long, &mut rows), Err(CsvError::RecordTooLong(2)));
    }

    #[test]
    fn a_huge_record_is_refused_with_its_row() {
        let mut csv = CsvRows::default();
        let mut rows = Vec::new();
        csv.push(b"to,name\n+551199999,", &mut rows).unwrap();
        let long = vec![b'x'; 100_000];
        assert_eq!(csv.push(&long, &mut rows), Err(CsvError::RecordTooLong(2)));
    }
}
