//! Per-request state: everything a fresh component instance owns, built for each request and dropped
//! with it. App-wide state (engine, compiled components, models) is only referenced.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::interfaces::view::{self, LlmGrants, LlmView};
use crate::outbound::OutboundPolicy;

/// How long the epoch ticker waits between ticks; the unit of the CPU budget.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a component's instances are granted, built once per component from spin.toml.
pub struct Sandbox {
    pub llm: Arc<LlmGrants>,
    pub environment: Vec<(String, String)>,
    /// Host directories and where the guest sees them, read-only.
    pub mounts: Vec<(PathBuf, String)>,
    pub outbound: OutboundPolicy,
    pub max_memory_bytes: usize,
    /// Epoch ticks during which an instance may run guest code, summed over the request.
    pub cpu_budget_ticks: u64,
}

/// The instance ran guest code for longer than its CPU budget (an endless loop, most likely).
#[derive(Debug, thiserror::Error)]
#[error("the handler used more than {budget:?} of CPU time and was stopped")]
pub(crate) struct CpuBudgetExceeded {
    pub budget: Duration,
}

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    llm: Arc<LlmGrants>,
    outbound: OutboundPolicy,
    limits: StoreLimits,
    cpu_ticks: u64,
    cpu_budget_ticks: u64,
}

/// A store for one request: the instance's sandbox, memory limit and CPU budget.
///
/// The epoch ticker advances every [`EPOCH_TICK`]; the deadline callback runs at most once per tick,
/// and only while guest code runs (not while it waits in a host call such as inference), so counting
/// its calls measures the guest's own CPU time. Each call also yields to the async runtime.
pub(crate) fn new_store(
    engine: &Engine,
    sandbox: &Sandbox,
) -> wasmtime::Result<Store<InstanceState>> {
    let mut wasi = WasiCtx::builder();
    wasi.envs(&sandbox.environment).inherit_stderr();
    for (host, guest) in &sandbox.mounts {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
    }
    let state = InstanceState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        llm: sandbox.llm.clone(),
        outbound: sandbox.outbound.clone(),
        limits: StoreLimitsBuilder::new()
            .memory_size(sandbox.max_memory_bytes)
            .instances(4)
            .build(),
        cpu_ticks: 0,
        cpu_budget_ticks: sandbox.cpu_budget_ticks,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let state = context.data_mut();
        state.cpu_ticks += 1;
        if state.cpu_ticks > state.cpu_budget_ticks {
            let budget = EPOCH_TICK * state.cpu_budget_ticks as u32;
            return Err(wasmtime::Error::new(CpuBudgetExceeded { budget }));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    Ok(store)
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

fn llm(state: &mut InstanceState) -> LlmView<'_> {
    LlmView {
        table: &mut state.table,
        grants: &state.llm,
    }
}

/// Everything a component may import: WASI, `wasi:http`, and the `nnspin:llm/llm` world (`wasi:nn` and
/// nnspin's interfaces).
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    view::add_to_linker(&mut linker, llm)?;
    Ok(linker)
}
