//! A decoder in OpenVINO's PagedAttention form, through the small C interface of
//! `host/native/openvino_paged.cpp` (the transformation exists only in OpenVINO's C++ API; see there why it
//! must run in this process). The build compiles that library against the `openvino` wheel and this
//! binary carries it: it is loaded from memory once, after the OpenVINO C library, whose C++ runtime it
//! shares.
//!
//! A [`PagedModel`] is one compiled model and one infer request whose key and value caches are blocks of
//! [`PagedModel::block_size`] positions; a pass runs the new tokens of several sequences, each over its
//! own list of blocks ([`Pass`]).

use std::ffi::{CString, c_char};
use std::path::Path;
use std::ptr::NonNull;

use crate::backend::BackendError;

/// The library's handle of one model.
#[repr(C)]
struct Handle {
    _private: [u8; 0],
}

/// Room for the library's error messages.
const ERROR_BYTES: usize = 2048;

type LoadFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const *const c_char,
    usize,
    *mut c_char,
    usize,
) -> *mut Handle;
type SizeFn = unsafe extern "C" fn(*const Handle) -> usize;
type ReserveFn = unsafe extern "C" fn(*mut Handle, usize, *mut c_char, usize) -> i32;
type RunFn = unsafe extern "C" fn(
    *mut Handle,
    *const i64,
    *const i64,
    usize,
    *const i32,
    *const i32,
    *const i32,
    usize,
    *const i32,
    usize,
    i32,
    *const i64,
    usize,
    *mut *const f32,
    *mut c_char,
    usize,
) -> i32;
type FreeFn = unsafe extern "C" fn(*mut Handle);

/// The library's functions, resolved once.
struct Library {
    load: LoadFn,
    block_size: SizeFn,
    vocabulary: SizeFn,
    block_bytes: SizeFn,
    reserve: ReserveFn,
    release: ReserveFn,
    run: RunFn,
    free: FreeFn,
    /// Keeps the functions mapped.
    _library: libloading::Library,
}

#[cfg(openvino_paged)]
fn library() -> Result<&'static Library, String> {
    use std::sync::OnceLock;
    static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            load_library()
                .map_err(|e| format!("cannot load OpenVINO's PagedAttention library: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The library as the build compiled it, loaded from an in-memory file: the binary stays one file.
#[cfg(openvino_paged)]
fn load_library() -> Result<Library, Box<dyn std::error::Error>> {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    const BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libnnspin_openvino_paged.so"));
    // SAFETY: the name is a valid C string; the descriptor returned is checked before use.
    let fd = unsafe { libc::memfd_create(c"nnspin_openvino_paged".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(BYTES)?;
    // SAFETY: the library's initialisers only set up C++ statics; it links the OpenVINO runtime that the
    // C library loaded before (the backend starts only after `OpenVino::start`).
    let library = unsafe { libloading::Library::new(format!("/proc/self/fd/{fd}")) }?;
    // SAFETY: the signatures are those `openvino_paged.cpp` declares `extern "C"`.
    unsafe {
        Ok(Library {
            load: *library.get(b"nnspin_paged_load\0")?,
            block_size: *library.get(b"nnspin_paged_block_size\0")?,
            vocabulary: *library.get(b"nnspin_paged_vocabulary\0")?,
            block_bytes: *library.get(b"nnspin_paged_block_bytes\0")?,
            reserve: *library.get(b"nnspin_paged_reserve\0")?,
            release: *library.get(b"nnspin_paged_release\0")?,
            run: *library.get(b"nnspin_paged_run\0")?,
            free: *library.get(b"nnspin_paged_free\0")?,
            _library: library,
        })
    }
}

#[cfg(not(openvino_paged))]
fn library() -> Result<&'static Library, String> {
    Err("this host was built without OpenVINO's PagedAttention library (no openvino wheel at build \
         time: set OPENVINO_DIR to its package folder and rebuild)"
        .into())
}

/// Calls `f` with an error buffer and turns its failure into the library's message.
fn checked<T>(
    f: impl FnOnce(*mut c_char, usize) -> Option<T>,
    error: fn(String) -> BackendError,
) -> Result<T, BackendError> {
    let mut message = [0 as c_char; ERROR_BYTES];
    f(message.as_mut_ptr(), ERROR_BYTES).ok_or_else(|| {
        // SAFETY: the library writes a NUL-terminated string within the buffer (it is zeroed, so an
        // empty message is one too).
        let text = unsafe { std::ffi::CStr::from_ptr(message.as_ptr()) };
        error(text.to_string_lossy().into_owned())
    })
}

/// The inputs of one pass, kept between passes so their buffers are reused. Sequence `i`'s new tokens
/// are `ids[subsequence_begins[i]..subsequence_begins[i + 1]]`, after `past_lens[i]` cached positions, in
/// the blocks `block_indices[block_indices_begins[i]..block_indices_begins[i + 1]]`.
#[derive(Default)]
pub(super) struct Pass {
    pub ids: Vec<i64>,
    pub positions: Vec<i64>,
    pub past_lens: Vec<i32>,
    pub subsequence_begins: Vec<i32>,
    pub block_indices_begins: Vec<i32>,
    pub block_indices: Vec<i32>,
    pub max_context_len: i32,
    /// The tokens whose logits come back, in this order.
    pub logits_indices: Vec<i64>,
}

impl Pass {
    pub fn clear(&mut self) {
        self.ids.clear();
        self.positions.clear();
        self.past_lens.clear();
        self.subsequence_begins.clear();
        self.subsequence_begins.push(0);
        self.block_indices_begins.clear();
        self.block_indices_begins.push(0);
        self.block_indices.clear();
        self.max_context_len = 0;
        self.logits_indices.clear();
    }

    /// Adds a sequence's `ids` at `positions`, after `past` cached positions, over `blocks`.
    pub fn push(&mut self, ids: &[i64], positions: &[i64], past: usize, blocks: &[i32]) {
        self.ids.extend_from_slice(ids);
        self.positions.extend_from_slice(positions);
        self.past_lens.push(past as i32);
        self.subsequence_begins.push(self.ids.len() as i32);
        self.block_indices.extend_from_slice(blocks);
        self.block_indices_begins
            .push(self.block_indices.len() as i32);
        self.max_context_len = self.max_context_len.max((past + ids.len()) as i32);
    }

    /// Asks for the logits of the last token pushed.
    pub fn want_last(&mut self) {
        self.logits_indices.push(self.ids.len() as i64 - 1);
    }

    pub fn sequences(&self) -> usize {
        self.past_lens.len()
    }
}

/// One paged model: its compiled form and the infer request that holds the caches. Used by one thread
/// (the model's scheduler), which is why it may move to one.
pub(super) struct PagedModel {
    library: &'static Library,
    handle: NonNull<Handle>,
    pub block_size: usize,
    pub vocabulary: usize,
    /// Bytes of one block across every layer's caches.
    pub block_bytes: usize,
}

// SAFETY: the handle is used only through `&mut self` (one thread at a time); OpenVINO's infer requests
// may be used from any thread, one at a time.
unsafe impl Send for PagedModel {}

impl PagedModel {
    /// Reads the stateful IR `xml`, transforms it to PagedAttention and compiles it on `device` with the
    /// given properties.
    pub fn load(
        xml: &Path,
        device: &str,
        properties: &[(&str, String)],
    ) -> Result<Self, BackendError> {
        let library = library().map_err(BackendError::Load)?;
        let text = |s: &str| {
            CString::new(s).map_err(|_| BackendError::Load(format!("{s:?} holds a NUL byte")))
        };
        let path = text(&xml.to_string_lossy())?;
        let device = text(device)?;
        let strings = properties
            .iter()
            .flat_map(|(key, value)| [text(key), text(value)])
            .collect::<Result<Vec<_>, _>>()?;
        let pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        let handle = checked(
            |error, len| {
                // SAFETY: every pointer is a live C string; `pointers` holds key/value pairs.
                let raw = unsafe {
                    (library.load)(
                        path.as_ptr(),
                        device.as_ptr(),
                        pointers.as_ptr(),
                        properties.len(),
                        error,
                        len,
                    )
                };
                NonNull::new(raw)
            },
            BackendError::Load,
        )?;
        // SAFETY: `handle` is live until `drop`.
        let (block_size, vocabulary, block_bytes) = unsafe {
            (
                (library.block_size)(handle.as_ptr()),
                (library.vocabulary)(handle.as_ptr()),
                (library.block_bytes)(handle.as_ptr()),
            )
        };
        Ok(Self {
            library,
            handle,
            block_size,
            vocabulary,
            block_bytes,
        })
    }

    /// Makes the caches hold at least `blocks` blocks, keeping what they hold.
    pub fn reserve(&mut self, blocks: usize) -> Result<(), BackendError> {
        self.resize(self.library.reserve, blocks)
    }

    /// Gives the caches' memory back, down to `blocks` blocks; what they held is gone.
    pub fn release(&mut self, blocks: usize) -> Result<(), BackendError> {
        self.resize(self.library.release, blocks)
    }

    fn resize(&mut self, resize: ReserveFn, blocks: usize) -> Result<(), BackendError> {
        checked(
            // SAFETY: `handle` is live; `&mut self` makes this the only call on it.
            |error, len| {
                (unsafe { resize(self.handle.as_ptr(), blocks, error, len) } == 0).then_some(())
            },
            BackendError::Runtime,
        )
    }

    /// Runs `pass` and returns the logits it asked for, `[pass.logits_indices.len(), vocabulary]`.
    pub fn run(&mut self, pass: &Pass) -> Result<&[f32], BackendError> {
        let sequences = pass.sequences();
        assert!(
            pass.subsequence_begins.len() == sequences + 1
                && pass.block_indices_begins.len() == sequences + 1
                && pass.positions.len() == pass.ids.len(),
            "a pass is built by `Pass::push`"
        );
        let mut logits: *const f32 = std::ptr::null();
        checked(
            |error, len| {
                // SAFETY: every slice outlives the call, with the lengths passed beside it; the library
                // wraps them without keeping them past the call.
                let status = unsafe {
                    (self.library.run)(
                        self.handle.as_ptr(),
                        pass.ids.as_ptr(),
                        pass.positions.as_ptr(),
                        pass.ids.len(),
                        pass.past_lens.as_ptr(),
                        pass.subsequence_begins.as_ptr(),
                        pass.block_indices_begins.as_ptr(),
                        sequences,
                        pass.block_indices.as_ptr(),
                        pass.block_indices.len(),
                        pass.max_context_len,
                        pass.logits_indices.as_ptr(),
                        pass.logits_indices.len(),
                        &mut logits,
                        error,
                        len,
                    )
                };
                (status == 0).then_some(())
            },
            BackendError::Runtime,
        )?;
        // SAFETY: on success the library points `logits` at `[logits_indices, vocabulary]` floats that stay
        // valid until the next call on this handle, which `&mut self` rules out while the slice lives.
        Ok(unsafe {
            std::slice::from_raw_parts(logits, pass.logits_indices.len() * self.vocabulary)
        })
    }
}

impl Drop for PagedModel {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `load` and is freed once.
        unsafe { (self.library.free)(self.handle.as_ptr()) }
    }
}
