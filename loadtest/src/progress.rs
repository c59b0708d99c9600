//! What the user sees while a run goes on, on stderr: a progress bar while
//! users are set up and through the steps of a ramp (on a terminal), and one
//! line per second otherwise (connections, offered and achieved rate,
//! errors, the last second's p99). Off a terminal, the bar becomes a plain
//! line per second too.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Progress, RunConfig, ScenarioKind};
use crate::report::fmt_us;
use crate::run::{LiveSecond, Tick};

/// The live display.
pub struct Display {
    mode: Progress,
    bar: Option<ProgressBar>,
    ramp_rates: Vec<f64>,
    /// When a plain setup line was last printed.
    last_setup_line: Mutex<Option<std::time::Instant>>,
}

impl Display {
    pub fn new(mode: Progress, config: &RunConfig) -> Display {
        let terminal = std::io::stderr().is_terminal();
        let bar = (mode == Progress::Auto && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg:>14} [{bar:40}] {pos}/{len} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            mode,
            bar,
            ramp_rates: if config.scenario == ScenarioKind::Ramp {
                config.ramp_rates()
            } else {
                Vec::new()
            },
            last_setup_line: Mutex::new(None),
        }
    }

    pub fn tick(&self, t: &Tick) {
        if self.mode == Progress::Off {
            return;
        }
        match t {
            Tick::Setup { stage, done, total } => match &self.bar {
                Some(bar) => {
                    bar.set_message(format!("setup: {stage}"));
                    bar.set_length(*total);
                    bar.set_position(*done);
                }
                None => {
                    let mut last = self
                        .last_setup_line
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        *last = Some(std::time::Instant::now());
                        eprintln!("setup: {stage} {done}/{total}");
                    }
                }
            },
            Tick::Second(s) => {
                let line = line(s);
                match &self.bar {
                    Some(bar) => {
                        if !self.ramp_rates.is_empty() && s.offered_per_s > 0.0 {
                            let step = self
                                .ramp_rates
                                .iter()
                                .filter(|&&r| r <= s.offered_per_s * 1.0001)
                                .count();
                            bar.set_message("ramp: step");
                            bar.set_length(self.ramp_rates.len() as u64);
                            bar.set_position(step as u64);
                        } else if s.stage != crate::run::Stage::Setup && self.ramp_rates.is_empty()
                        {
                            bar.set_message(s.stage.name());
                        }
                        bar.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            }
        }
    }

    /// Removes the bar before the final table.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `  12s traffic  conns 200  offered 2000/s  achieved 1998/s  delivered 1998/s  errors 0  p99 1.23ms`
pub fn line(s: &LiveSecond) -> String {
    format!(
        "{:>5}s {:<7} conns {:<6} offered {:>7.0}/s achieved {:>7.0}/s delivered {:>7.0}/s errors {:<4} p99 {}",
        s.elapsed.as_secs(),
        s.stage.name(),
        s.connections,
        s.offered_per_s,
        s.acked_per_s,
        s.delivered_per_s,
        s.errors,
        s.p99_us.map_or_else(|| "-".into(), fmt_us),
    )
}
