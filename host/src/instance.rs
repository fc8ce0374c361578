//! Per-request state: everything a fresh component instance owns, built for each request and dropped
//! with it. App-wide state (engine, compiled components, models) is only referenced.

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use std::time::Instant;

use crate::bindings;
use crate::model_management::{ManagementView, ModelManagement};
use crate::models::ModelAccess;
use crate::nn::{NnView, WasiNn};
use crate::system::{System, SystemView};
use crate::text::{Text, TextView};

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    models: ModelAccess,
    started: Instant,
    pub limits: StoreLimits,
}

impl InstanceState {
    /// A sandbox with no preopened directories and no network, only the granted environment.
    pub fn new(
        models: ModelAccess,
        environment: &[(String, String)],
        max_memory_bytes: usize,
        started: Instant,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .envs(environment)
            .inherit_stderr()
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            models,
            started,
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .instances(4)
                .build(),
        }
    }
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
            hooks: Default::default(),
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
