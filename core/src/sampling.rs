//! Choosing the next token from a step's logits: greedy at temperature 0, otherwise temperature,
//! top-k and nucleus (top-p) sampling from a seeded generator, so a seed reproduces its output.

/// How to pick tokens; validated by the API layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Smallest set of tokens whose probability mass reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
}

/// SplitMix64: tiny, fast, and good enough to draw one uniform number per token.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused across steps: (logit, token) candidates.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng(params.seed);
        Self {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 || self.params.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |logit: f32| ((logit - max) * inv_t).exp();
        let total: f64 = logits.iter().map(|&l| weight(l) as f64).sum();
        let (top_k, top_p) = (self.params.top_k, self.params.top_p);

        if top_k == 0 && top_p >= 1.0 {
            // The whole distribution: no sorting needed.
            let mut target = self.rng.next_f64() * total;
            for (token, &logit) in logits.iter().enumerate() {
                target -= weight(logit) as f64;
                if target <= 0.0 {
                    return token as u32;
                }
            }
            return argmax(logits);
        }

        // Sort only as many of the best candidates as the cut needs: most of the mass sits in a few dozen.
        let mut keep = if top_k > 0 {
            top_k.min(logits.len())
        } else {
            64.min(logits.len())
        };
        loop {
            self.candidates.clear();
            self.candidates
                .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
            let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            if keep < self.candidates.len() {
                self.candidates.select_nth_unstable_by(keep, by_logit);
                self.candidates.truncate(keep);
            }
            self.candidates.sort_unstable_by(by_logit);
            let mass: f64 = self
                .candidates
                .iter()
                .map(|&(l, _)| weight(l) as f64)
                .sum::<f64>()
                / total;
            if top_k > 0 || mass >= top_p as f64 || keep == logits.len() {
                break;
            }
            keep = (keep * 4).min(logits.len());
        }

        // Nucleus cut over the kept candidates, renormalised among themselves.
        let kept_total: f64 = self.candidates.iter().map(|&(l, _)| weight(l) as f64).sum();
        let mut cumulative = 0.0;
        let mut cut = self.candidates.len();
        for (i, &(l, _)) in self.candidates.iter().enumerate() {
            cumulative += weight(l) as f64 / kept_total;
            if cumulative >= top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        let nucleus = &self.candidates[..cut];
        let nucleus_total: f64 = nucleus.iter().map(|&(l, _)| weight(l) as f64).sum();
        let mut target = self.rng.next_f64() * nucleus_total;
        for &(l, token) in nucleus {
            target -= weight(l) as f64;
            if target <= 0.0 {
                return token;
            }
        }
        nucleus[0].1
    }
}

/// Penalties on tokens already in the sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PenaltyParams {
    /// HF-style, over prompt and completion: a seen token's logit is divided by it when positive and
    /// multiplied by it when negative. 1 is off.
    pub repetition: f32,
    /// OpenAI-style, over the completion: subtracted once from every token generated so far. 0 is off.
    pub presence: f32,
    /// OpenAI-style, over the completion: subtracted per occurrence. 0 is off.
    pub frequency: f32,
}

impl Default for PenaltyParams {
    fn default() -> Self {
        Self {
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
        }
    }
}

pub struct Penalties {
    params: PenaltyParams,
    seen: Vec<bool>,
    generated: Vec<u32>,
    /// The distinct tokens seen, so applying the penalties costs the sequence's size, not the vocabulary's.
    distinct: Vec<u32>,
}

impl Penalties {
    pub fn new(params: PenaltyParams, vocab_size: usize) -> Self {
        let active = params != PenaltyParams::default();
        let size = if active { vocab_size } else { 0 };
        Self {
            params,
            seen: vec![false; size],
            generated: vec![0; size],
            distinct: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        !self.seen.is_empty()
    }

    fn mark(&mut self, token: u32) -> Option<usize> {
        let index = token as usize;
        let seen = self.seen.get_mut(index)?;
        if !*seen {
            *seen = true;
            self.distinct.push(token);
        }
        Some(index)
    }

    pub fn observe_prompt(&mut self, token: u32) {
        self.mark(token);
    }

    pub fn observe_generated(&mut self, token: u32) {
        if let Some(index) = self.mark(token) {
            self.generated[index] += 1;
        }
    }

    pub fn apply(&self, logits: &mut [f32]) {
        let PenaltyParams {
            repetition,
            presence,
            frequency,
        } = self.params;
        for &token in &self.distinct {
            let Some(logit) = logits.get_mut(token as usize) else {
                continue;
            };
            if repetition != 1.0 {
                *logit = if *logit > 0.0 {
                    *logit / repetition
                } else {
                    *logit * repetition
                };
            }
            let count = self.generated[token as usize];
            if count > 0 {
                *logit -= presence + frequency * count as f32;
            }
        }
    }
}

/// A chosen token's log-probability and the most likely tokens of its step, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of the distribution `logits` define (after penalties, biases and structure, before
/// temperature): the chosen token's and the `top_n` best.
pub fn logprobs(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_total = max + sum.ln() as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top_n || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top_n);
            }
        }
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - log_total,
        top: best.into_iter().map(|(t, l)| (t, l - log_total)).collect(),
    }
}

/// Index of the largest logit; the lowest index wins a tie, so greedy decoding is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    // The best value kept beside its index rather than read back from the slice (a bounds-checked load
    // in the loop's dependency chain) at each of the vocabulary's values, once per token.
    let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            (best, best_value) = (i, l);
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        }
    }

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens_both_signs() {
        let params = PenaltyParams {
            repetition: 2.0,
            ..PenaltyParams::default()
        };
        let mut penalties = Penalties::new(params, 4);
        penalties.observe_prompt(1);
        penalties.observe_generated(2);
        penalties.observe_prompt(1);
        let mut logits = vec![1.0, 4.0, -1.0, 3.0];
        penalties.apply(&mut logits);
        assert_eq!(logits, vec![1.0, 2.0, -2.0, 3.0]);
        assert_eq!(argmax(&logits), 3);
    }

    #[test]
    fn presence_and_frequency_count_only_generated_tokens() {
        let params = PenaltyParams {
            presence: 0.5,
            frequency: 1.0,
            ..PenaltyParams::default()
        };
        let mut penalties = Penalties::new(params, 3);
        penalties.observe_prompt(0);
        penalties.observe_generated(1);
        penalties.observe_generated(1);
        let mut logits = vec![5.0, 5.0, 5.0];
        penalties.apply(&mut logits);
        assert_eq!(logits, vec![5.0, 2.5, 5.0]);
        assert!(!Penalties::new(PenaltyParams::default(), 3).is_active());
    }

    #[test]
    fn logprobs_are_normalised_and_ranked() {
        let l = vec![
            (0.5f32).ln(),
            (0.25f32).ln(),
            (0.25f32).ln(),
            f32::NEG_INFINITY,
        ];
        let lp = logprobs(&l, 1, 2);
        assert!((lp.logprob - (0.25f32).ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(
            (lp.top[0].0, lp.top[1].0),
            (0, 1),
            "ties keep the lower id first"
        );
        assert!((lp.top[0].1 - (0.5f32).ln()).abs() < 1e-6);
        assert!(logprobs(&l, 0, 0).top.is_empty());
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut l = logits();
        l[123] = 100.0;
        assert_eq!(Sampler::new(params(0.0, 1.0, 0, 1)).sample(&l), 123);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0.95, 0, seed));
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_restricts_to_the_best_tokens() {
        let l = logits();
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let best: Vec<u32> = order[..3].to_vec();
        let mut s = Sampler::new(params(5.0, 1.0, 3, 42));
        for _ in 0..200 {
            assert!(best.contains(&s.sample(&l)));
        }
    }

    #[test]
    fn small_top_p_keeps_only_the_dominant_token() {
        let mut l = vec![0.0; 500];
        l[9] = 10.0;
        let mut s = Sampler::new(params(1.0, 0.5, 0, 3));
        for _ in 0..100 {
            assert_eq!(s.sample(&l), 9);
        }
    }

    #[test]
    fn full_distribution_follows_probabilities() {
        // Two tokens with probabilities 0.2 and 0.8.
        let l = vec![0.0, (4.0f32).ln()];
        let mut s = Sampler::new(params(1.0, 1.0, 0, 11));
        let ones = (0..10_000).filter(|_| s.sample(&l) == 1).count();
        assert!((7_600..8_400).contains(&ones), "{ones}");
    }

    #[test]
    fn wide_nucleus_grows_past_the_first_window() {
        // A flat distribution needs nearly every token to reach top_p = 0.99.
        let l = vec![1.0; 2000];
        let mut s = Sampler::new(params(1.0, 0.99, 0, 5));
        let picks: std::collections::HashSet<u32> = (0..2000).map(|_| s.sample(&l)).collect();
        assert!(
            picks.iter().any(|&t| t >= 64 * 4 * 4),
            "only early tokens drawn"
        );
    }
}
