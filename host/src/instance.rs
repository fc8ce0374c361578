//! Per-request state: everything a fresh component instance owns, built for each request and dropped
//! with it. App-wide state (engine, compiled components, models) is only referenced.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use std::time::Instant;

use crate::bindings;
use crate::model_management::{ManagementView, ModelManagement};
use crate::models::ModelAccess;
use crate::nn::{NnView, WasiNn};
use crate::outbound::OutboundPolicy;
use crate::system::{System, SystemView};
use crate::text::{Text, TextView};

/// How long the epoch ticker waits between ticks; the unit of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a component's instances are granted, built once per component from spin.toml.
pub struct Sandbox {
    pub models: ModelAccess,
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
pub struct CpuBudgetExceeded {
    pub budget: Duration,
}

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    models: ModelAccess,
    outbound: OutboundPolicy,
    started: Instant,
    limits: StoreLimits,
    cpu_ticks: u64,
    cpu_budget_ticks: u64,
}

/// A store for one request: the instance's sandbox, memory limit and CPU budget.
///
/// The epoch ticker advances every [`EPOCH_TICK`]; the deadline callback runs at most once per tick,
/// and only while guest code runs (not while it waits in a host call such as inference), so counting
/// its calls measures the guest's own CPU time. Each call also yields to the async runtime.
pub fn new_store(
    engine: &Engine,
    sandbox: &Sandbox,
    started: Instant,
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
        models: sandbox.models.clone(),
        outbound: sandbox.outbound.clone(),
        started,
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

fn nn(state: &mut InstanceState) -> NnView<'_> {
    NnView {
        table: &mut state.table,
        models: &state.models,
    }
}

fn text(state: &mut InstanceState) -> TextView<'_> {
    TextView {
        table: &mut state.table,
        models: &state.models,
    }
}

fn management(state: &mut InstanceState) -> ManagementView<'_> {
    ManagementView {
        models: &state.models,
    }
}

fn system(state: &mut InstanceState) -> SystemView<'_> {
    SystemView {
        models: &state.models,
        started: state.started,
    }
}

/// Everything a component may import: WASI, `wasi:http`, `wasi:nn` and nnspin's interfaces.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::tensor::add_to_linker::<_, WasiNn>(&mut linker, nn)?;
    bindings::graph::add_to_linker::<_, WasiNn>(&mut linker, nn)?;
    bindings::inference::add_to_linker::<_, WasiNn>(&mut linker, nn)?;
    bindings::errors::add_to_linker::<_, WasiNn>(&mut linker, nn)?;
    bindings::text::add_to_linker::<_, Text>(&mut linker, text)?;
    bindings::models::add_to_linker::<_, ModelManagement>(&mut linker, management)?;
    bindings::system::add_to_linker::<_, System>(&mut linker, system)?;
    Ok(linker)
}
