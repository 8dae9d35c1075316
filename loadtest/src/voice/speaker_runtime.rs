//! A single-threaded tokio runtime on a thread of its own (`lodge-load-speakers`) for the
//! speaking callers, so their sends are not queued behind the listeners' receive work on the
//! main runtime.

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct SpeakerRuntime {
    pub handle: Handle,
    /// Dropped with the runtime value: the thread's `block_on` returns and the runtime shuts
    /// down (after the main task has awaited every speaker).
    _stop: oneshot::Sender<()>,
}

impl SpeakerRuntime {
    pub fn start() -> std::io::Result<SpeakerRuntime> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("lodge-load-speakers".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(SpeakerRuntime {
            handle,
            _stop: stop,
        })
    }
}
