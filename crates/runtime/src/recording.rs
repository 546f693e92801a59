//! A runtime that runs nothing: it records what it was asked to do and reports every started
//! instance as `Ready` at once.
//!
//! The reconciler's tests assert on [`RecordingRuntime::calls`], and the control-plane scale
//! benchmark plans 10,000 applications against it, so every operation is a map update under
//! one lock (O(log n)) with no I/O, and ports and ids come from a counter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Instance, InstanceId, InstanceSpec, Phase, Runtime, RuntimeError, RuntimeEvent};

/// Records starts and stops; instances are `Ready` immediately. Cheap to clone.
///
/// ```
/// # use gauntlet_runtime::{recording::RecordingRuntime, Runtime};
/// let runtime = RecordingRuntime::new();
/// assert!(runtime.instances().is_empty());
/// assert!(runtime.calls().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct RecordingRuntime {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<InstanceId, Instance>,
    calls: Vec<String>,
    events: Vec<RuntimeEvent>,
    counter: u64,
}

/// Fake ports count up from here and wrap within the unprivileged range.
const FIRST_PORT: u16 = 20_000;

impl RecordingRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every operation so far, oldest first: `start {instance id}` or `stop {instance id}`.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Returns the operations so far and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state().calls)
    }

    /// Number of operations so far, without copying them.
    pub fn call_count(&self) -> usize {
        self.state().calls.len()
    }

    /// Sets an instance's phase, to simulate a crash or a failing probe in reconciler tests.
    /// Returns false when the instance is unknown.
    pub fn set_phase(&self, id: &InstanceId, phase: Phase) -> bool {
        match self.state().instances.get_mut(id) {
            Some(instance) => {
                instance.phase = phase;
                true
            }
            None => false,
        }
    }

    /// Queues an event for the next [`Runtime::drain_events`].
    pub fn push_event(&self, event: RuntimeEvent) {
        self.state().events.push(event);
    }
}

impl Runtime for RecordingRuntime {
    fn instances(&self) -> Vec<Instance> {
        self.state().instances.values().cloned().collect()
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let mut state = self.state();
        state.counter += 1;
        let n = state.counter;
        let instance = Instance {
            id: InstanceId(format!("{}-{}-{n}", spec.app, spec.revision)),
            app: spec.app,
            revision: spec.revision,
            port: FIRST_PORT + (n % u64::from(u16::MAX - FIRST_PORT)) as u16,
            pid: None,
            phase: Phase::Ready,
            restarts: 0,
            created_ms: n,
        };
        state.calls.push(format!("start {}", instance.id));
        state
            .instances
            .insert(instance.id.clone(), instance.clone());
        Ok(instance)
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.calls.push(format!("stop {id}"));
        state.instances.remove(id);
        Ok(())
    }

    fn drain_events(&self) -> Vec<RuntimeEvent> {
        std::mem::take(&mut self.state().events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_spec::ProcessSpec;

    fn spec(app: &str) -> InstanceSpec {
        InstanceSpec {
            app: app.into(),
            revision: "r1".into(),
            process: ProcessSpec::new(["true"]),
            readiness: None,
        }
    }

    #[tokio::test]
    async fn started_instances_are_ready_and_stop_forgets_them() {
        let rt = RecordingRuntime::new();
        let a = rt.start(spec("a")).await.unwrap();
        let b = rt.start(spec("b")).await.unwrap();
        assert!(a.is_ready());
        assert_ne!(a.id, b.id);
        assert_ne!(a.port, b.port);
        rt.stop(&a.id).await.unwrap();
        rt.stop(&a.id).await.unwrap();
        assert_eq!(rt.instances(), vec![b.clone()]);
        assert_eq!(
            rt.calls(),
            vec![
                format!("start {}", a.id),
                format!("start {}", b.id),
                format!("stop {}", a.id),
                format!("stop {}", a.id),
            ]
        );
        assert_eq!(rt.take_calls().len(), 4);
        assert_eq!(rt.call_count(), 0);
    }

    #[tokio::test]
    async fn phases_and_events_can_be_simulated() {
        let rt = RecordingRuntime::new();
        let a = rt.start(spec("a")).await.unwrap();
        assert!(rt.set_phase(&a.id, Phase::Unready { reason: "x".into() }));
        assert!(!rt.instances()[0].is_ready());
        rt.push_event(RuntimeEvent {
            app: "a".into(),
            instance: a.id.clone(),
            action: "restarted".into(),
            detail: String::new(),
        });
        assert_eq!(rt.drain_events().len(), 1);
        assert!(rt.drain_events().is_empty());
    }
}
