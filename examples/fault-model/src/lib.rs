//! A test fixture that misbehaves on request, so the host's defences can be
//! tested one at a time: traps, runaway loops, memory and stack exhaustion,
//! sandbox escapes, log floods and model-reported errors.
//!
//! The input `action` is `[kind, arg]`:
//!
//! | kind | does | result |
//! |---:|---|---|
//! | 0 | answers at once | `arg` |
//! | 1 | panics ("fault-model: asked to panic"), which traps | - |
//! | 2 | spins forever without yielding | - |
//! | 3 | allocates `arg` MiB and writes to every page (traps if refused) | `arg` |
//! | 4 | sleeps `arg` ms | `arg` |
//! | 5 | reads `/etc/passwd`, `/etc/hostname`, lists `/` and `.`, reads env and args | bytes + entries + vars + args it saw (0 = sandboxed) |
//! | 6 | recurses until the stack overflows | - |
//! | 7 | writes `arg` lines of 100 bytes to stdout, then `arg` to stderr | `arg` |
//! | 8 | returns `Error::Internal("fault-model: asked to fail")` | - |
//! | 9 | tries to reserve `arg` MiB and survives a refusal | 1 if refused, else 0 |
//! | 10 | returns outputs that break the contract in way `arg` (see [`bad_outputs`]) | - |
//! | 11 | returns `blob` of `arg` MiB | `arg` |
//! | 12 | writes `arg` bytes of newlines to stdout and stderr | `arg` |
//! | 13 | writes a line with terminal escapes, `\r` and a bidi override to stderr | 13 |
//!
//! Every answer has three outputs, as declared: `result`, `blob` (UINT8, any
//! shape; empty unless asked for) and `text` (BYTES; empty).

use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::time::Duration;
use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

struct Fault;

impl Model for Fault {
    fn metadata() -> Metadata {
        Metadata {
            name: "fault".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("action", Datatype::Int64, &[2])],
            outputs: vec![
                TensorSpec::new("result", Datatype::Int64, &[1]),
                TensorSpec::new("blob", Datatype::Uint8, &[-1, -1]),
                TensorSpec::new("text", Datatype::Bytes, &[-1]),
            ],
        }
    }

    fn predict(
        inputs: Vec<Tensor>,
        _parameters: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        let [action] = wasm_host_guest::inputs(inputs)?;
        let action = action.to_i64()?;
        let [kind, arg] = action[..] else {
            return Err(Error::invalid_input("action: expected [kind, arg]"));
        };
        let result = match kind {
            0 => arg,
            1 => panic!("fault-model: asked to panic (arg {arg})"),
            2 => spin(),
            3 => allocate(arg)?,
            4 => {
                std::thread::sleep(Duration::from_millis(non_negative(arg)?));
                arg
            }
            5 => probe_sandbox(),
            6 => recurse(0) as i64,
            7 => flood_logs(arg)?,
            8 => return Err(Error::internal("fault-model: asked to fail")),
            9 => survive_refused_reserve(arg)?,
            10 => return Ok(bad_outputs(arg)),
            11 => {
                let mib = usize::try_from(non_negative(arg)?).unwrap_or(usize::MAX);
                let blob = Tensor {
                    datatype: Datatype::Uint8,
                    shape: vec![mib as u64, 1 << 20],
                    data: vec![1; mib << 20],
                };
                return Ok(vec![result_tensor(arg), blob, empty_text()]);
            }
            12 => flood_newlines(arg)?,
            13 => {
                eprintln!("\x1b[31mred\x1b[0m\rforged line \u{202e}txt.exe");
                13
            }
            _ => {
                return Err(Error::invalid_input(format!(
                    "action: unknown kind {kind}, expected 0..=13"
                )));
            }
        };
        Ok(vec![result_tensor(result), empty_blob(), empty_text()])
    }
}

fn result_tensor(result: i64) -> Tensor {
    Tensor::from_i64(vec![1], &[result])
}

fn empty_blob() -> Tensor {
    Tensor::from_u8(vec![0, 0], &[])
}

fn empty_text() -> Tensor {
    Tensor {
        datatype: Datatype::Bytes,
        shape: vec![0],
        data: Vec::new(),
    }
}

/// Outputs that break the contract, one way per `how`, for the host's
/// output checks and encoders:
/// 0 a shape whose element count overflows (2^63 × 2) with no data;
/// 1 a shape of 10^8 empty rows; 2 `result` as FP64 where INT64 is declared;
/// 3 a fourth output, which nothing declares; 4 the outputs out of order
/// (`blob` first); 5 a shape and data that disagree; 6 a truncated BYTES
/// element; 7 `text` missing.
fn bad_outputs(how: i64) -> Vec<Tensor> {
    let blob = |shape: Vec<u64>| Tensor {
        datatype: Datatype::Uint8,
        shape,
        data: Vec::new(),
    };
    match how {
        0 => vec![result_tensor(0), blob(vec![1 << 63, 2]), empty_text()],
        1 => vec![result_tensor(1), blob(vec![100_000_000, 0]), empty_text()],
        2 => vec![
            Tensor::from_f64(vec![1], &[2.0]),
            empty_blob(),
            empty_text(),
        ],
        3 => vec![
            result_tensor(3),
            empty_blob(),
            empty_text(),
            Tensor::from_i64(vec![1], &[3]),
        ],
        4 => vec![empty_blob(), result_tensor(4), empty_text()],
        5 => vec![
            Tensor::from_i64(vec![1], &[5, 5]),
            empty_blob(),
            empty_text(),
        ],
        6 => vec![
            result_tensor(6),
            empty_blob(),
            Tensor {
                datatype: Datatype::Bytes,
                shape: vec![1],
                // Says 100 bytes follow; 3 do.
                data: vec![100, 0, 0, 0, b'a', b'b', b'c'],
            },
        ],
        _ => vec![result_tensor(7), empty_blob()],
    }
}

/// Asks for `mib` MiB the fallible way: a refused `memory.grow` is then an
/// error the model handles, not an abort.
fn survive_refused_reserve(mib: i64) -> Result<i64, Error> {
    let bytes = usize::try_from(non_negative(mib)?)
        .unwrap_or(usize::MAX)
        .saturating_mul(1 << 20);
    let mut buffer: Vec<u8> = Vec::new();
    Ok(match buffer.try_reserve_exact(bytes) {
        Ok(()) => 0,
        Err(_) => 1,
    })
}

/// Writes `count` newlines to stdout and to stderr: empty lines are the
/// cheapest way to make many log events.
fn flood_newlines(count: i64) -> Result<i64, Error> {
    let newlines = vec![b'\n'; usize::try_from(non_negative(count)?).unwrap_or(0)];
    let _ = std::io::stdout().write_all(&newlines);
    let _ = std::io::stderr().write_all(&newlines);
    Ok(count)
}

fn non_negative(arg: i64) -> Result<u64, Error> {
    u64::try_from(arg).map_err(|_| Error::invalid_input(format!("action: arg {arg} is negative")))
}

/// Burns CPU with no clock or I/O calls, so only fuel or epoch interruption
/// can stop it; `black_box` keeps the optimiser from proving it useless.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n).wrapping_add(1);
    }
}

/// Allocates and dirties `mib` MiB. A refused allocation aborts (a trap), as
/// it would in any model that runs out of memory.
fn allocate(mib: i64) -> Result<i64, Error> {
    let bytes = usize::try_from(non_negative(mib)?)
        .ok()
        .and_then(|m| m.checked_mul(1 << 20))
        .ok_or_else(|| {
            Error::invalid_input(format!("action: {mib} MiB is more than wasm32 can address"))
        })?;
    let mut buffer = vec![0u8; bytes];
    // Fresh wasm memory is already zero, so the pages are only really used
    // once written; 4 KiB covers both host and wasm page sizes.
    for byte in buffer.iter_mut().step_by(4096) {
        *byte = 1;
    }
    black_box(&mut buffer);
    Ok(mib)
}

/// Counts what the sandbox let through; each part counts 0 when denied.
fn probe_sandbox() -> i64 {
    let files = ["/etc/passwd", "/etc/hostname"]
        .iter()
        .map(|path| std::fs::read(path).map_or(0, |bytes| bytes.len()))
        .sum::<usize>();
    let entries = ["/", "."]
        .iter()
        .map(|dir| {
            std::fs::read_dir(dir).map_or(0, |entries| entries.filter(Result::is_ok).count())
        })
        .sum::<usize>();
    let vars = std::env::vars_os().count();
    let args = std::env::args_os().count();
    (files + entries + vars + args) as i64
}

/// Recursion the compiler can neither turn into a loop nor bound: every frame
/// keeps a buffer alive across the call.
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(false) {
        return 0;
    }
    recurse(black_box(depth + 1)) + frame[black_box(0)]
}

/// Fills stdout then stderr with numbered 100-byte lines, in 64 KiB writes so
/// that a large flood reaches the host in moments rather than one call per
/// line. Stops quietly when the host stops accepting output, as a capped log
/// may.
fn flood_logs(lines: i64) -> Result<i64, Error> {
    let count = non_negative(lines)?;
    let streams: [(&str, Box<dyn Write>); 2] = [
        ("stdout", Box::new(std::io::stdout().lock())),
        ("stderr", Box::new(std::io::stderr().lock())),
    ];
    for (name, stream) in streams {
        let mut stream = BufWriter::with_capacity(64 << 10, stream);
        for i in 0..count {
            // 99 characters and a newline.
            if writeln!(stream, "fault-model {name} line {i:>10} {:.<64}", "").is_err() {
                break;
            }
        }
        let _ = stream.flush();
    }
    Ok(lines)
}

wasm_host_guest::export_model!(Fault);
