//! The choice loop chat and legacy completions share: the choices of one prompt generated as rows of one
//! batch (as many as the model's execution contexts carry, the rest in further batches), whole or
//! streamed with their chunks interleaved, with usage counted once. An endpoint says only how its
//! choices look ([`Endpoint`]).
//!
//! A stream opens the first batch's execution context before the response starts, so a model at
//! capacity is a 503 status rather than an error event inside a 200 stream; later batches open theirs
//! in turn.

use serde_json::Value;
use wasip2::http::types::ResponseOutparam;

use nnspin_guest::ApiError;
use nnspin_guest::generate::{Completed, Event, Generation, GenerationRequest, Outcome, Piece};
use nnspin_guest::http::{self, EventStream, Framing};
use nnspin_guest::model::Model;

use crate::errors;
use crate::request::SamplingFields;
use crate::response::{self, Completion, Response, Usage};

/// One choice of a response: its `index`, the prompt's generation it comes from and its number among
/// that prompt's choices (which sets its seed).
pub struct Sequence<'a, 'm> {
    pub index: u32,
    pub generation: &'a GenerationRequest<'m>,
    pub choice: u32,
}

/// How an endpoint's choices look.
pub trait Endpoint {
    /// How the response's `id` begins.
    const ID_PREFIX: &'static str;
    /// `object` of a whole response and of a stream's chunks.
    const OBJECT: &'static str;
    const CHUNK_OBJECT: &'static str;

    /// Every choice to generate, in `index` order.
    fn sequences(&self) -> Vec<Sequence<'_, '_>>;

    /// A whole choice.
    fn choice(&self, index: u32, completed: Completed) -> Value;

    /// The generation to run in place of an output the endpoint will not send (chat: a call the
    /// conversation has already answered), if any.
    fn instead(&self, _completed: &Completed) -> Option<&GenerationRequest<'_>> {
        None
    }

    /// A streamed choice, its state kept between its pieces.
    fn streamed(&self, index: u32) -> Box<dyn StreamedChoice<'_> + '_>;
}

/// The chunks of one streamed choice, each a `choices` entry.
pub trait StreamedChoice<'r> {
    /// Before any token: chat's assistant role, completions' echoed prompt.
    fn opening(&mut self) -> Vec<Value>;
    /// For a piece of generated text; `None` holds it back.
    fn piece(&mut self, piece: Piece<'_>) -> Option<Value>;
    /// Once the generation has ended, before [`closing`](Self::closing): a generation to run in its
    /// place when what was held back is not to be sent (it is dropped, and the new pieces stream as
    /// this choice's).
    fn instead(&mut self, _outcome: &Outcome) -> Option<&'r GenerationRequest<'r>> {
        None
    }
    /// Once the generation has ended: what was held back, and the finish reason.
    fn closing(&mut self, outcome: &Outcome) -> Vec<Value>;
}

/// Generates every choice of `endpoint` on `model` and sends the response: one JSON object, or (when
/// `sampling` asks for a stream) server-sent chunks ending with the usage chunk when it asks for one,
/// then `[DONE]`.
pub fn respond<E: Endpoint>(
    out: ResponseOutparam,
    endpoint: &E,
    model: &Model,
    usage: Usage,
    sampling: &SamplingFields,
) {
    let completion = Completion::new(E::ID_PREFIX, &model.info.id);
    let sequences = endpoint.sequences();
    if sampling.stream {
        let include_usage = sampling.include_usage();
        stream_choices(out, endpoint, &sequences, &completion, usage, include_usage)
    } else {
        whole_choices(out, endpoint, &sequences, &completion, usage)
    }
}

/// The sequences in batches: consecutive choices of one prompt, as many as its model decodes as rows of
/// one batch.
fn batches<'s, 'a, 'm>(sequences: &'s [Sequence<'a, 'm>]) -> Vec<&'s [Sequence<'a, 'm>]> {
    let mut batches = Vec::new();
    let mut rest = sequences;
    while let Some(first) = rest.first() {
        let most = first.generation.choices_per_batch() as usize;
        let len = rest
            .iter()
            .take(most)
            .zip(first.choice..)
            .take_while(|(s, choice)| {
                std::ptr::eq(s.generation, first.generation) && s.choice == *choice
            })
            .count();
        let (batch, after) = rest.split_at(len);
        batches.push(batch);
        rest = after;
    }
    batches
}

/// Opens the generation of a batch's choices.
fn open<'a, 'm>(batch: &[Sequence<'a, 'm>]) -> Result<Generation<'a, 'm>, ApiError> {
    let first = &batch[0];
    first
        .generation
        .open_choices(first.choice, batch.len() as u32)
}

fn whole_choices<E: Endpoint>(
    out: ResponseOutparam,
    endpoint: &E,
    sequences: &[Sequence<'_, '_>],
    completion: &Completion,
    mut usage: Usage,
) {
    let mut choices = Vec::with_capacity(sequences.len());
    for batch in batches(sequences) {
        let first = &batch[0];
        let completed = match first
            .generation
            .complete_choices(first.choice, batch.len() as u32)
        {
            Ok(completed) => completed,
            Err(error) => return errors::send(out, &error),
        };
        for (sequence, completed) in batch.iter().zip(completed) {
            let completed = match endpoint.instead(&completed) {
                Some(answer) => answer.complete(sequence.choice),
                None => Ok(completed),
            };
            match completed {
                Ok(completed) => {
                    usage.add(&completed.outcome, sequence.choice == 0);
                    choices.push(endpoint.choice(sequence.index, completed));
                }
                Err(error) => return errors::send(out, &error),
            }
        }
    }
    let whole = Response::whole(completion, E::OBJECT, choices, &usage);
    http::send_json(out, 200, &whole);
}

fn stream_choices<E: Endpoint>(
    out: ResponseOutparam,
    endpoint: &E,
    sequences: &[Sequence<'_, '_>],
    completion: &Completion,
    mut usage: Usage,
    include_usage: bool,
) {
    let batches = batches(sequences);
    let Some(first) = batches.first() else {
        return;
    };
    let mut opened = match open(first) {
        Ok(generation) => Some(generation),
        Err(error) => return errors::send(out, &error),
    };
    let mut events = EventStream::start(out, Framing::ServerSentEvents);
    let send = |events: &mut EventStream, choice: Value| {
        events.send_json(&Response::chunk(
            completion,
            E::CHUNK_OBJECT,
            choice,
            include_usage,
        ))
    };
    for batch in batches {
        let mut streamed: Vec<_> = batch.iter().map(|s| endpoint.streamed(s.index)).collect();
        for choice in streamed.iter_mut().flat_map(|s| s.opening()) {
            send(&mut events, choice);
        }
        let generation = match opened.take() {
            Some(generation) => Ok(generation),
            None => open(batch),
        };
        // A choice closes as soon as it ends, unless what it held back is to be answered instead: that
        // generation runs once the batch is done.
        let mut answers = Vec::new();
        let ran = generation.and_then(|generation| {
            generation.run_choices(|row, event| match event {
                Event::Piece(piece) => match streamed[row].piece(piece) {
                    Some(choice) => send(&mut events, choice),
                    None => true,
                },
                Event::Ended(outcome) => {
                    match streamed[row].instead(outcome) {
                        Some(answer) => answers.push((row, answer)),
                        None => {
                            let choice = batch[row].choice;
                            let streamed = streamed[row].as_mut();
                            close(&mut events, &send, &mut usage, choice, streamed, outcome);
                        }
                    }
                    true
                }
            })
        });
        if let Err(error) = ran {
            return response::fail_stream(events, &error);
        }
        for (row, answer) in answers {
            let outcome = answer.open(batch[row].choice).and_then(|generation| {
                generation.run(|piece| match streamed[row].piece(piece) {
                    Some(choice) => send(&mut events, choice),
                    None => true,
                })
            });
            match outcome {
                Ok(outcome) => {
                    let choice = batch[row].choice;
                    let streamed = streamed[row].as_mut();
                    close(&mut events, &send, &mut usage, choice, streamed, &outcome);
                }
                Err(error) => return response::fail_stream(events, &error),
            }
        }
    }
    response::end_stream(
        events,
        completion,
        E::CHUNK_OBJECT,
        include_usage.then_some(&usage),
    );
}

/// Sends a streamed choice's closing chunks (what it held back, its finish reason) and counts its usage
/// (the prompt once, with choice 0).
fn close(
    events: &mut EventStream,
    send: &impl Fn(&mut EventStream, Value) -> bool,
    usage: &mut Usage,
    choice: u32,
    streamed: &mut dyn StreamedChoice<'_>,
    outcome: &Outcome,
) {
    usage.add(outcome, choice == 0);
    for chunk in streamed.closing(outcome) {
        send(events, chunk);
    }
}
