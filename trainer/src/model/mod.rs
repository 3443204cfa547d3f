//! The backbone and what is trained on top of it.
//! - [`vit`]: the ViT (DINOv2 / DINO v1), numerically timm's; [`timm`]: timm's tensor names.
//! - [`head`]: projection head and prototypes.
//! - [`host`]: CPU kernels of the no-grad forward pass.
//! - [`weights`]: weight files (safetensors, `.pth`), position-embedding resampling.
//! - [`paths`]: parameters by their path in the module tree.

pub mod head;
pub mod host;
pub mod paths;
pub mod timm;
pub mod vit;
pub mod weights;

pub use vit::{Vit, VitConfig};
