//! Grows a TensorBoard event file to a size over a time, as a job logging images or histograms
//! does: records of RECORD_KIB (a tensor TensorBoard keeps but does not chart), a scalar with each,
//! written through a buffer and flushed every 100 ms, at a steady rate.
//!
//! Usage: tfevents_grow FILE MIB SECONDS [RECORD_KIB]   (RECORD_KIB defaults to 64)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use periscope::tfevents::proto::{
    event, summary_value, Event, Summary, SummaryValue, TensorProto, TensorShapeDim,
    TensorShapeProto, DT_FLOAT,
};
use periscope::tfevents::writer::unix_now;
use periscope::tfevents::{EventWriter, ScalarValue};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tfevents_grow FILE MIB SECONDS [RECORD_KIB]";
    let path = PathBuf::from(args.first().expect(usage));
    let total = args
        .get(1)
        .and_then(|a| a.parse::<u64>().ok())
        .expect(usage)
        << 20;
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let record_kib: usize = args.get(3).map_or(64, |a| a.parse().expect(usage));
    let floats = record_kib * 256;
    let mut w = EventWriter::create_at(&path, unix_now())?;
    let start = Instant::now();
    let (mut written, mut step) = (0u64, 0i64);
    loop {
        let elapsed = start.elapsed().as_secs_f64().min(seconds);
        let due = (total as f64 * elapsed / seconds) as u64;
        while written < due {
            let content: Vec<u8> = (0..floats * 4).map(|i| (i as i64 ^ step) as u8).collect();
            w.write_event(&Event {
                wall_time: unix_now(),
                step,
                what: Some(event::What::Summary(Summary {
                    value: vec![SummaryValue {
                        tag: "activations".into(),
                        metadata: None,
                        value: Some(summary_value::Value::Tensor(TensorProto {
                            dtype: DT_FLOAT,
                            tensor_shape: Some(TensorShapeProto {
                                dim: vec![TensorShapeDim {
                                    size: floats as i64,
                                }],
                                unknown_rank: false,
                            }),
                            tensor_content: content,
                            ..Default::default()
                        })),
                    }],
                })),
            })?;
            w.add_scalar(
                "loss",
                step,
                unix_now(),
                ScalarValue::F32(1.0 / (step + 1) as f32),
            )?;
            written += (floats * 4 + 80) as u64;
            step += 1;
        }
        w.flush()?;
        if elapsed >= seconds {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    w.flush()?;
    println!("{} bytes in {step} steps", std::fs::metadata(&path)?.len());
    Ok(())
}
