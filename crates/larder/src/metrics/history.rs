//! The last records of a run, kept for the dashboard to poll.

use std::collections::VecDeque;

/// The most recent records, each a JSON object on one line, numbered from the first record the
/// run ever produced; older ones fall out once `capacity` are kept.
///
/// A poller asks for the records from its position on ([`since_json`](Self::since_json)) and
/// keeps the `next` position of the answer for its next poll, so each record crosses the wire
/// once.
#[derive(Debug, Clone)]
pub struct History {
    first: u64,
    lines: VecDeque<String>,
    capacity: usize,
}

impl History {
    /// An empty history that keeps at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> History {
        History {
            first: 0,
            lines: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends one record, a JSON object without a line break.
    pub fn push(&mut self, line: String) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
            self.first += 1;
        }
        self.lines.push_back(line);
    }

    /// The number of records ever pushed (the position after the last one).
    pub fn next(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    /// `{"first": F, "next": N, "records": [...]}`: the records from position `since` on (from
    /// the oldest kept when `since` has fallen out; `first` tells the poller so).
    pub fn since_json(&self, since: u64) -> String {
        let skip = since
            .saturating_sub(self.first)
            .min(self.lines.len() as u64) as usize;
        let mut out = format!(
            "{{\"first\":{},\"next\":{},\"records\":[",
            self.first.max(since.min(self.next())),
            self.next()
        );
        for (k, line) in self.lines.iter().skip(skip).enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str(line);
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(h: &History, since: u64) -> serde_json::Value {
        serde_json::from_str(&h.since_json(since)).expect("valid JSON")
    }

    #[test]
    fn polls_get_each_record_once_and_old_ones_fall_out() {
        let mut h = History::new(3);
        assert_eq!(parsed(&h, 0)["records"].as_array().map(Vec::len), Some(0));
        for step in 1..=2 {
            h.push(format!("{{\"step\":{step}}}"));
        }
        let first = parsed(&h, 0);
        assert_eq!(first["next"], 2);
        assert_eq!(first["records"][1]["step"], 2);
        for step in 3..=5 {
            h.push(format!("{{\"step\":{step}}}"));
        }
        let later = parsed(&h, 2);
        assert_eq!(
            (later["first"].as_u64(), later["next"].as_u64()),
            (Some(2), Some(5))
        );
        let steps: Vec<_> = later["records"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["step"].clone())
            .collect();
        assert_eq!(steps, [3, 4, 5]);
        // A poller that fell behind the kept window gets what is left, told where it starts.
        let behind = parsed(&h, 0);
        assert_eq!(behind["first"], 2);
        assert_eq!(behind["records"].as_array().map(Vec::len), Some(3));
        assert_eq!(parsed(&h, 9)["records"].as_array().map(Vec::len), Some(0));
    }
}
