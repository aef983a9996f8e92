//! A process's CPU time and memory from `/proc` (Linux only): utime+stime from
//! `/proc/PID/stat` (every thread's, exited ones included) and VmRSS / VmHWM from
//! `/proc/PID/status`.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident memory now, in KiB.
    pub rss_kib: u64,
    /// The most resident memory the process has had, in KiB.
    pub hwm_kib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}/{file}; the CPU and memory figures need Linux's /proc")]
    Read {
        pid: String,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/{file} has an unexpected format")]
    Format { pid: String, file: &'static str },
}

/// `pid`, or `None` for this process.
pub fn sample(pid: Option<u32>) -> Result<ProcSample, ProcError> {
    let pid = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    let read = |file: &'static str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
            pid: pid.clone(),
            file,
            source,
        })
    };
    let format = |file| ProcError::Format {
        pid: pid.clone(),
        file,
    };
    let ticks = cpu_ticks(&read("stat")?).ok_or_else(|| format("stat"))?;
    let (rss_kib, hwm_kib) = memory_kib(&read("status")?).ok_or_else(|| format("status"))?;
    Ok(ProcSample {
        cpu: Duration::from_secs_f64(ticks as f64 / ticks_per_second()),
        rss_kib,
        hwm_kib,
    })
}

/// The kernel's USER_HZ (100 on every common Linux).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (VmRSS, VmHWM) in KiB from `/proc/PID/status`.
fn memory_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "4242 (tokio (worker) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 269 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_comes_from_vmrss_and_vmhwm() {
        let status =
            "Name:\tshoes-vz-server\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nThreads:\t5\n";
        assert_eq!(memory_kib(status), Some((30720, 40960)));
        assert_eq!(memory_kib("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample(None).expect("/proc/self");
        assert!(
            sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib,
            "{sample:?}"
        );
    }
}
