//! Stop sequences: generation ends where one appears, and it is never sent to the client.
//!
//! Text that might be the start of a stop sequence is held back until the next piece shows whether it
//! is; everything else is released as soon as it is generated, so streaming stays immediate.

#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds generated text; returns the text that may be sent now and whether a stop sequence ended
    /// the generation (its text, and anything after it, is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return (text, true);
        }
        let keep = self.longest_partial_stop();
        let release = self.held.len() - keep;
        let text = self.held[..release].to_string();
        self.held.drain(..release);
        (text, false)
    }

    /// The text still held back, once generation ended for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that begins some stop sequence.
    fn longest_partial_stop(&self) -> usize {
        let text = self.held.as_str();
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(text.len() + 1))
                    .filter(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut filter = StopFilter::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let (text, stopped) = filter.push(piece);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&filter.flush());
        (out, false)
    }

    #[test]
    fn a_stop_split_across_pieces_is_never_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".to_string(), true)
        );
        assert_eq!(
            run(&["END"], &["ab", "E", "N", "D", "zz"]),
            ("ab".to_string(), true)
        );
    }

    #[test]
    fn held_text_that_is_not_a_stop_is_released() {
        assert_eq!(
            run(&["END"], &["ab", "EN", "x"]),
            ("abENx".to_string(), false)
        );
        assert_eq!(run(&["END"], &["ab", "EN"]), ("abEN".to_string(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".to_string(), true));
    }

    #[test]
    fn text_is_released_immediately_when_no_stop_can_start() {
        let mut filter = StopFilter::new(&["STOP".to_string()]);
        assert_eq!(filter.push("hello "), ("hello ".to_string(), false));
        assert_eq!(filter.push("wörld"), ("wörld".to_string(), false));
    }
}
