//! Reading an ONNX file's protobuf wire format without decoding it: enough
//! to count a graph's nodes before the runner spends time on a hostile one.

/// How many nodes an ONNX model's main graph has, read straight off the
/// protobuf wire format (ModelProto field 7 is the graph, GraphProto field
/// 1 its nodes) without decoding anything else: cheap enough to refuse a
/// hostile graph before the runner spends a second on it.
pub fn graph_nodes(onnx: &[u8]) -> Result<usize, String> {
    let mut graph = None;
    for field in Fields::new(onnx) {
        let (number, value) = field?;
        if number == 7 {
            graph = value;
        }
    }
    let graph = graph.ok_or("it has no graph")?;
    let mut nodes = 0;
    for field in Fields::new(graph) {
        if field?.0 == 1 {
            nodes += 1;
        }
    }
    Ok(nodes)
}

/// The fields of one protobuf message: each field's number and, for a
/// length-delimited field, its bytes.
struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Fields {
            rest: message,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, tail) = self.rest.split_first().ok_or("a varint is cut short")?;
            self.rest = tail;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    fn skip(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "a field is too long")?;
        if n > self.rest.len() {
            return Err("a field runs past the end of the file".into());
        }
        let (taken, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(taken)
    }

    fn field(&mut self) -> Result<(u64, Option<&'a [u8]>), String> {
        let key = self.varint()?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => self.varint().map(|_| None)?,
            1 => self.skip(8).map(|_| None)?,
            2 => {
                let n = self.varint()?;
                Some(self.skip(n)?)
            }
            5 => self.skip(4).map(|_| None)?,
            other => return Err(format!("wire type {other} is not used by ONNX")),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Option<&'a [u8]>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let field = self.field();
        self.failed = field.is_err();
        Some(field)
    }
}
