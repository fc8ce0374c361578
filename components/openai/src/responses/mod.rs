//! `POST /v1/responses`, OpenAI's Responses API: the same generations as chat ([`Chat`]), answered as a
//! `response` object whose `output` holds a message item or `function_call` items, or streamed as the
//! SDK's typed events (`response.created` … `response.completed`), each numbered by `sequence_number`.
//! One output per request (the API has no `n`).

mod request;

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::generate::{Completed, FinishReason, Outcome, Piece};
use nnspin_guest::http::{self, EventStream, Framing};

use crate::chat::{CallHold, Chat, Generations};
use crate::errors;
use crate::request as chat_request;
use crate::response::fresh_id;
use crate::tools::Call;
pub use request::ResponsesRequest;

pub fn responses(request: IncomingRequest, out: ResponseOutparam) {
    let (request, model) =
        match chat_request::read(request, ResponsesRequest::parse, ResponsesRequest::sampling) {
            Ok(prepared) => prepared,
            Err(error) => return errors::send(out, &error),
        };
    let generations = match Generations::new(&request.chat, &model) {
        Ok(generations) => generations,
        Err(error) => return errors::send(out, &error),
    };
    let chat = generations.chat(&request.chat);
    let response = ResponseObject {
        id: fresh_id("resp_"),
        created_at: wasip2::clocks::wall_clock::now().seconds,
        model: &model.info.id,
        request: &request,
        input_tokens: generations.main.prompt().len() as u32,
    };
    if request.chat.sampling.stream {
        stream(out, &chat, &response)
    } else {
        whole(out, &chat, &response)
    }
}

/// What every state of one response shares.
struct ResponseObject<'a> {
    id: String,
    created_at: u64,
    model: &'a str,
    request: &'a ResponsesRequest,
    input_tokens: u32,
}

impl ResponseObject<'_> {
    /// The response object; `outcome` is `None` while it is in progress.
    fn json(&self, output: Vec<Value>, outcome: Option<&Outcome>) -> Value {
        let echo = &self.request.echo;
        let incomplete = outcome.is_some_and(|o| o.finish_reason == FinishReason::Length);
        let status = match outcome {
            None => "in_progress",
            Some(_) if incomplete => "incomplete",
            Some(_) => "completed",
        };
        let usage = outcome.map(|o| {
            json!({
                "input_tokens": self.input_tokens,
                "input_tokens_details": {
                    "cached_tokens": o.cached_tokens.min(self.input_tokens),
                    "cache_write_tokens": 0,
                },
                "output_tokens": o.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + o.completion_tokens,
            })
        });
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete.then(|| json!({"reason": "max_output_tokens"})),
            "instructions": echo.instructions,
            "max_output_tokens": echo.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": echo.temperature,
            "text": echo.text,
            "tool_choice": echo.tool_choice,
            "tools": echo.tools,
            "top_p": echo.top_p,
            "truncation": "disabled",
            "usage": usage,
            "metadata": echo.metadata,
        })
    }
}

/// An assistant message item holding `text`.
fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content: Vec<Value> = match status {
        "in_progress" => Vec::new(),
        _ => vec![output_text(text)],
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A `function_call` item; `arguments` empty while in progress.
fn function_call_item(id: &str, call_id: &str, call: &Call, status: &str) -> Value {
    let arguments = if status == "in_progress" {
        ""
    } else {
        &call.arguments
    };
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": call.name,
           "arguments": arguments, "status": status})
}

fn whole(out: ResponseOutparam, chat: &Chat<'_, '_>, response: &ResponseObject<'_>) {
    let completed = chat.generation.complete(0).and_then(|completed| {
        match chat.replacement(&completed.text, &completed.outcome) {
            Some(answer) => answer.complete(0),
            None => Ok(completed),
        }
    });
    let Completed { text, outcome, .. } = match completed {
        Ok(completed) => completed,
        Err(error) => return errors::send(out, &error),
    };
    let output = match chat.calls(&text, &outcome) {
        Some(calls) if !calls.is_empty() => calls
            .iter()
            .map(|call| function_call_item(&fresh_id("fc_"), &fresh_id("call_"), call, "completed"))
            .collect(),
        _ => vec![message_item(&fresh_id("msg_"), &text, "completed")],
    };
    http::send_json(out, 200, &response.json(output, Some(&outcome)));
}

fn stream(out: ResponseOutparam, chat: &Chat<'_, '_>, response: &ResponseObject<'_>) {
    // Opened before the response starts, so a model at capacity is a 503 status, not an error event.
    let generation = match chat.generation.open(0) {
        Ok(generation) => generation,
        Err(error) => return errors::send(out, &error),
    };
    let mut streamed = StreamedResponse {
        events: EventStream::start(out, Framing::ServerSentEvents),
        sequence: 0,
        hold: chat.hold(),
        message: None,
    };
    let in_progress = response.json(Vec::new(), None);
    streamed.send("response.created", json!({ "response": in_progress }));
    streamed.send("response.in_progress", json!({ "response": in_progress }));
    let result = generation
        .run(|piece| streamed.piece(piece))
        .and_then(
            |outcome| match chat.replacement(&streamed.hold.held, &outcome) {
                Some(answer) => {
                    streamed.hold.release();
                    answer.open(0)?.run(|piece| streamed.piece(piece))
                }
                None => Ok(outcome),
            },
        );
    match result {
        Ok(outcome) => streamed.close(chat, response, &outcome),
        Err(error) => streamed.fail(&error),
    }
}

/// A response being streamed; as in chat, a possible tool call is held back.
struct StreamedResponse {
    events: EventStream,
    sequence: u64,
    hold: CallHold,
    /// The message item once its first text has been sent: its id and its text so far.
    message: Option<(String, String)>,
}

/// The message item is the only output item of a text answer.
const MESSAGE_INDEX: usize = 0;

impl StreamedResponse {
    /// Sends one event, numbered; false once the client has gone.
    fn send(&mut self, kind: &str, mut event: Value) -> bool {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.events.send_named(kind, &event)
    }

    fn piece(&mut self, piece: Piece<'_>) -> bool {
        match self.hold.pass(piece.text) {
            Some(text) => self.text(&text),
            None => true,
        }
    }

    /// Sends text of the message item, opening the item and its text part first.
    fn text(&mut self, text: &str) -> bool {
        if self.message.is_none() {
            let id = fresh_id("msg_");
            self.send(
                "response.output_item.added",
                json!({"output_index": MESSAGE_INDEX, "item": message_item(&id, "", "in_progress")}),
            );
            self.send(
                "response.content_part.added",
                json!({"item_id": id, "output_index": MESSAGE_INDEX, "content_index": 0,
                       "part": output_text("")}),
            );
            self.message = Some((id, String::new()));
        }
        let (id, sent) = self.message.as_mut().expect("opened above");
        sent.push_str(text);
        let event = json!({"item_id": id, "output_index": MESSAGE_INDEX, "content_index": 0,
                           "delta": text, "logprobs": []});
        self.send("response.output_text.delta", event)
    }

    /// Sends what was held back (the calls, or the rest of the text), the items' ends, and the whole
    /// response.
    fn close(mut self, chat: &Chat<'_, '_>, response: &ResponseObject<'_>, outcome: &Outcome) {
        let output = match chat.calls(&self.hold.held, outcome) {
            Some(calls) if !calls.is_empty() => self.send_calls(&calls),
            _ => {
                let rest = std::mem::take(&mut self.hold.held);
                if !rest.is_empty() || self.message.is_none() {
                    self.text(&rest);
                }
                let (id, text) = self.message.take().expect("opened above");
                let at = json!({"item_id": id, "output_index": MESSAGE_INDEX, "content_index": 0});
                let mut done = at.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                self.send("response.output_text.done", done);
                let mut part = at;
                part["part"] = output_text(&text);
                self.send("response.content_part.done", part);
                let item = message_item(&id, &text, "completed");
                let done = json!({"output_index": MESSAGE_INDEX, "item": item});
                self.send("response.output_item.done", done);
                vec![item]
            }
        };
        let finished = match outcome.finish_reason {
            FinishReason::Length => "response.incomplete",
            _ => "response.completed",
        };
        let whole = response.json(output, Some(outcome));
        self.send(finished, json!({ "response": whole }));
        self.events.finish();
    }

    /// Each call as an item of its own: added, its arguments, done.
    fn send_calls(&mut self, calls: &[Call]) -> Vec<Value> {
        let mut items = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            let (id, call_id) = (fresh_id("fc_"), fresh_id("call_"));
            let added = function_call_item(&id, &call_id, call, "in_progress");
            self.send(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            );
            self.send(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": call.arguments}),
            );
            self.send(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "name": call.name,
                       "arguments": call.arguments}),
            );
            let item = function_call_item(&id, &call_id, call, "completed");
            self.send(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            items.push(item);
        }
        items
    }

    /// A failure after the stream started (its status already sent) is its last event.
    fn fail(mut self, error: &ApiError) {
        let body = error.body();
        let event =
            json!({"code": body["error"]["code"], "message": error.message, "param": error.param});
        self.send("error", event);
        self.events.finish();
    }
}
