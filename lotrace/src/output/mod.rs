//! Rendering: journeys, summaries and probe tables as text, JSON Lines and
//! Perfetto traces. Reads the model, never the kernel.

pub mod perfetto;
pub mod render;
