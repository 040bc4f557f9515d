//! What a benchmark ran on: the CPU's model, frequency and vector extensions, read from
//! `/proc/cpuinfo`, recorded with every result so that tables name their machine.

use serde_json::{json, Value};

/// The vector and matrix extensions that decide which kernels run (gemm's and ours), in
/// the names `/proc/cpuinfo` gives them.
const SIMD_FLAGS: [&str; 16] = [
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "avx_vnni",
];

/// The machine as a JSON object: `model` (`model name`), `vendor`, `family`, `cpu_model`,
/// `stepping`, `mhz` (the first processor's `cpu MHz` when the run started), `logical_cpus`
/// (processors listed), `threads` (what the process may use) and `flags` (those of
/// [`SIMD_FLAGS`] the CPU has). Off Linux, only `threads`.
pub fn describe() -> Value {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => from_cpuinfo(&text, threads),
        Err(_) => json!({ "threads": threads }),
    }
}

/// [`describe`] from the text of `/proc/cpuinfo`.
fn from_cpuinfo(text: &str, threads: usize) -> Value {
    // The first processor's block describes them all on the machines we run on.
    let first = text.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let flags: Vec<&str> = match field("flags") {
        Some(present) => {
            let present: Vec<&str> = present.split_whitespace().collect();
            SIMD_FLAGS
                .into_iter()
                .filter(|flag| present.contains(flag))
                .collect()
        }
        None => Vec::new(),
    };
    let logical_cpus = text
        .lines()
        .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
        .count();
    json!({
        "model": field("model name"),
        "vendor": field("vendor_id"),
        "family": number("cpu family"),
        "cpu_model": number("model"),
        "stepping": number("stepping"),
        "mhz": number("cpu MHz"),
        "logical_cpus": logical_cpus,
        "threads": threads,
        "flags": flags,
    })
}

/// One line naming the machine of [`describe`], for the printed table.
pub fn summary(cpu: &Value) -> String {
    let text = |key: &str| cpu[key].as_str().unwrap_or("unknown CPU").to_string();
    let number = |key: &str| cpu[key].as_f64().map(|v| format!("{v}"));
    let flags: Vec<&str> = cpu["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "machine: {} (family {}, model {}), {} logical CPUs at {} MHz, {} threads; {}",
        text("model"),
        number("family").unwrap_or_else(|| "?".into()),
        number("cpu_model").unwrap_or_else(|| "?".into()),
        cpu["logical_cpus"].as_u64().unwrap_or(0),
        number("mhz").unwrap_or_else(|| "?".into()),
        cpu["threads"].as_u64().unwrap_or(0),
        flags.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CORES: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\
        model\t\t: 2\nmodel name\t: AMD EPYC\nstepping\t: 1\ncpu MHz\t\t: 2596.120\n\
        flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 sha_ni\n\n\
        processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\
        model name\t: AMD EPYC\ncpu MHz\t\t: 2596.120\nflags\t\t: fpu avx2\n";

    #[test]
    fn reads_model_frequency_and_vector_flags_from_cpuinfo() {
        let cpu = from_cpuinfo(TWO_CORES, 2);
        assert_eq!(cpu["model"], "AMD EPYC");
        assert_eq!(cpu["vendor"], "AuthenticAMD");
        assert_eq!(cpu["family"], 26.0);
        assert_eq!(cpu["cpu_model"], 2.0);
        assert_eq!(cpu["mhz"], 2596.12);
        assert_eq!(cpu["logical_cpus"], 2);
        assert_eq!(
            cpu["flags"],
            json!([
                "sse4_2",
                "avx",
                "avx2",
                "fma",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512_bf16"
            ])
        );
        assert_eq!(
            summary(&cpu),
            "machine: AMD EPYC (family 26, model 2), 2 logical CPUs at 2596.12 MHz, 2 threads; \
             sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16"
        );
    }

    #[test]
    fn unreadable_fields_stay_null() {
        let cpu = from_cpuinfo("processor\t: 0\n", 4);
        assert_eq!(cpu["model"], Value::Null);
        assert_eq!(cpu["flags"], json!([]));
        assert_eq!(cpu["threads"], 4);
    }
}
