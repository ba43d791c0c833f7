//! External-process engines: any program, in any language, declared in
//! `cases/engines/<name>.yaml` and run once per forward.
//!
//! For each run the harness writes a request directory (request.json, the inputs as `.npy`),
//! runs the engine's command from the repository root with a timeout (its whole process group is
//! killed when it hangs), and reads the tensors it wrote back, mapping its names and layouts onto
//! HF's with the rules of its engine file. docs/engine-protocol.md is the protocol. An engine
//! file with `protocol: 2` is started once per model instead and spoken to in JSON lines
//! ([`session`]): load, forward, decode, block.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::case::{Inputs, ModelSpec, glob_match};
use crate::engine::{Engine, LoadedModel, Outputs};
use crate::error::{Error, Result};
use crate::structure::TapKind;

pub mod process;
pub mod protocol;
pub mod rules;
pub mod session;
pub mod spec;
pub mod truncate;

pub use rules::{Dims, Rules};
pub use spec::{EngineSpec, OutputDtype};

/// Keep the request directory of a failed run (and say where) when set to anything but empty,
/// `0` or `false`.
pub const KEEP_ENV: &str = "HARNESS_KEEP_REQUEST";
/// Environment variables every engine command gets.
pub const REQUEST_ENV: &str = "HARNESS_REQUEST";
pub const OUTPUT_ENV: &str = "HARNESS_OUTPUT_DIR";

/// How many lines of a failed engine's stderr a report shows.
const TAIL_LINES: usize = 20;

pub struct ExternalEngine {
    spec: Arc<EngineSpec>,
}

impl ExternalEngine {
    pub fn new(spec: EngineSpec) -> Self {
        ExternalEngine { spec: Arc::new(spec) }
    }
    /// Load `cases/engines/<name>.yaml`.
    pub fn load(root: &Path, file: &Path) -> Result<Self> {
        spec::load(root, file).map(Self::new)
    }
    pub fn spec(&self) -> &EngineSpec {
        &self.spec
    }
}

/// `cases/engines/<name>.yaml` under `root`, by engine name.
pub fn engine_file(root: &Path, name: &str) -> PathBuf {
    spec::engines_dir(root).join(format!("{name}.yaml"))
}

/// Every engine file under `root`, loaded: `(name, file, engine or its error)`.
pub fn discover(root: &Path) -> Result<Vec<(String, PathBuf, Result<ExternalEngine>)>> {
    Ok(spec::discover(root)?
        .into_iter()
        .map(|f| (spec::engine_name(&f), f.clone(), ExternalEngine::load(root, &f)))
        .collect())
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

impl Engine for ExternalEngine {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn implements(&self, class: &str) -> bool {
        self.spec.families.iter().any(|f| glob_match(f, class))
    }
    fn default_enabled(&self) -> bool {
        self.spec.default
    }
    fn tolerance(&self) -> Option<crate::tolerance::Tolerance> {
        self.spec.tolerance.clone()
    }
    fn load(&self, model: &ModelSpec) -> Result<Box<dyn LoadedModel>> {
        // Depth bisection's truncated specs: the engine reads files, so give it files with that
        // many layers.
        let cut = truncate::files_for(model)?;
        let mut model = model.clone();
        if let Some(dir) = &cut {
            model.dir = dir.path().to_path_buf();
        }
        let all = &model.structure.modules;
        let kinds = all.iter().map(|m| (m.path.clone(), m.kind)).collect();
        let modules: Vec<String> = all.iter().map(|m| m.path.clone()).collect();
        let taps = self
            .spec
            .taps
            .as_ref()
            .map(|globs| modules.iter().filter(|m| globs.iter().any(|g| glob_match(g, m))).cloned().collect());
        let mut m = ExternalModel {
            spec: self.spec.clone(),
            model: model.clone(),
            modules,
            kinds,
            taps,
            session: None,
            capabilities: session::Capabilities::default(),
            not_produced: Mutex::new(BTreeMap::new()),
            _cut: cut,
        };
        if self.spec.protocol == 2 {
            let s = session::Session::start(&self.spec, m.model_json(), &self.spec.options)?;
            m.capabilities = s.capabilities.clone();
            if let Some(theirs) = &m.capabilities.taps {
                let mine = m.taps.take().unwrap_or_else(|| m.modules.clone());
                m.taps = Some(mine.into_iter().filter(|t| theirs.iter().any(|g| glob_match(g, t))).collect());
            }
            m.session = Some(Mutex::new(Some(s)));
        }
        Ok(Box::new(m))
    }
    fn unavailable(&self) -> Option<String> {
        let prog = &self.spec.command[0];
        let found = if prog.contains('/') {
            let p = Path::new(prog);
            if p.is_absolute() { p.is_file() } else { self.spec.root.join(p).is_file() }
        } else {
            on_path(prog)
        };
        if found {
            return None;
        }
        let setup = match &self.spec.setup {
            Some(s) => format!("; set it up with: {s}"),
            None => String::new(),
        };
        Some(format!(
            "engine `{}` is not installed here: its command `{prog}` does not exist ({}){setup}",
            self.spec.name,
            crate::error::display_path(&self.spec.file)
        ))
    }
}

pub struct ExternalModel {
    spec: Arc<EngineSpec>,
    model: ModelSpec,
    /// Every module the model's structure records, for a run that asks for everything.
    modules: Vec<String>,
    /// How each module's leading axes line up with the inputs.
    kinds: std::collections::HashMap<String, TapKind>,
    /// What the engine file's `taps:` allows; None: everything.
    taps: Option<Vec<String>>,
    /// Protocol 2: the engine's process for this model (None after a crash: restarted on the
    /// next request).
    session: Option<Mutex<Option<session::Session>>>,
    capabilities: session::Capabilities,
    /// Taps the engine said it did not produce, with its reason (protocol 2).
    not_produced: Mutex<BTreeMap<String, String>>,
    /// The model's files cut to fewer layers (depth bisection); last, so that it is removed
    /// after the engine's process is stopped.
    _cut: Option<tempfile::TempDir>,
}

impl LoadedModel for ExternalModel {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        self.run_ctx(None, inputs, taps)
    }
    fn run_for(&self, ctx: &crate::engine::RunContext<'_>, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        self.run_ctx(Some(ctx), inputs, taps)
    }
    fn decode_for(
        &self,
        ctx: &crate::engine::RunContext<'_>,
        prompt: &Inputs,
        tokens: &crate::case::IdMatrix,
        taps: &[&str],
    ) -> Result<Vec<Outputs>> {
        self.decode_ctx(Some(ctx), prompt, tokens, taps)
    }
    fn taps(&self) -> Option<Vec<String>> {
        self.taps.clone()
    }
    fn notes(&self) -> Vec<String> {
        self.capabilities.info.iter().map(|i| format!("engine `{}`: {i}", self.spec.name)).collect()
    }
    fn not_produced(&self) -> Vec<(String, String)> {
        self.not_produced.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    fn decode(&self, prompt: &Inputs, tokens: &crate::case::IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        self.decode_ctx(None, prompt, tokens, taps)
    }
    fn blocks(&self) -> Vec<crate::engine::Block> {
        self.blocks_impl()
    }
    fn run_block(&self, inputs: &Inputs, block: &str, input: &crate::tensor::Tensor, taps: &[&str]) -> Result<Outputs> {
        self.run_block_impl(inputs, block, input, taps)
    }
}

impl ExternalModel {
    fn run_ctx(&self, ctx: Option<&crate::engine::RunContext<'_>>, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let asked: Vec<String> =
            if taps.is_empty() { self.modules.clone() } else { taps.iter().map(|t| t.to_string()).collect() };
        let wanted: Vec<String> =
            asked.into_iter().filter(|t| self.taps.as_ref().is_none_or(|allowed| allowed.contains(t))).collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("harness-{}-", self.spec.name))
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), &e))?;
        let result = match self.session {
            Some(_) => self.forward_v2(dir.path(), inputs, &wanted, ctx),
            None => self.run_in(dir.path(), inputs, &wanted),
        };
        match result {
            Err(e) if keep_requested() => {
                let kept = dir.keep();
                let msg = format!("{} [request kept in {}]", e.msg, kept.display());
                Err(Error { msg, ..e })
            }
            r => r,
        }
    }
    fn decode_ctx(
        &self,
        ctx: Option<&crate::engine::RunContext<'_>>,
        prompt: &Inputs,
        tokens: &crate::case::IdMatrix,
        taps: &[&str],
    ) -> Result<Vec<Outputs>> {
        if self.session.is_none() || !self.capabilities.decode {
            let why = if self.session.is_none() {
                "it speaks protocol 1"
            } else {
                "its `load` reply has no `capabilities: {decode: true}`"
            };
            return Err(Error::engine(format!("engine `{}` does not decode: {why}", self.spec.name))
                .file(&self.spec.file)
                .hint("list only engines that decode under a decode case's `engines:` (docs/engine-protocol.md, protocol 2)"));
        }
        let dir = self.request_dir()?;
        let files = protocol::write_inputs(dir.path(), prompt, true)?;
        let tfile = dir.path().join("decode_tokens.npy");
        protocol::write_npy_i64(&tfile, tokens)?;
        let out = dir.path().join(protocol::OUTPUT_DIR);
        let wanted = self.wanted(taps);
        let reply = self.request(json!({
            "op": "decode",
            "case": ctx.map(|c| c.case),
            "inputs": files,
            "decode": {"file": std::path::absolute(&tfile).unwrap_or(tfile), "shape": tokens.shape()},
            "taps": protocol::request_taps(&self.spec, &wanted),
            "output_dir": std::path::absolute(&out).unwrap_or(out.clone()),
            "dtype": self.spec.dtype.as_str(),
            "options": self.options(ctx),
        }))?;
        let wanted = self.record_not_produced(&reply, wanted);
        (0..=tokens.seq)
            .map(|k| {
                let seq = if k == 0 { prompt.input_ids.seq } else { 1 };
                let dims = Dims::new(Some(prompt.input_ids.batch), Some(seq)).with_config(self.model.config.raw());
                protocol::read_outputs(&out.join(k.to_string()), &self.spec, &wanted, &dims)
                    .map_err(|e| Error { msg: format!("decode step {k}: {}", e.msg), ..e })
            })
            .collect()
    }
    fn blocks_impl(&self) -> Vec<crate::engine::Block> {
        self.capabilities
            .blocks
            .iter()
            .map(|(path, input)| crate::engine::Block { path: path.clone(), input: input.clone() })
            .collect()
    }
    fn run_block_impl(
        &self,
        inputs: &Inputs,
        block: &str,
        input: &crate::tensor::Tensor,
        taps: &[&str],
    ) -> Result<Outputs> {
        if self.session.is_none() {
            return Err(Error::engine(format!("engine `{}` cannot run block `{block}` alone", self.spec.name)));
        }
        let dir = self.request_dir()?;
        let files = protocol::write_inputs(dir.path(), inputs, true)?;
        let xfile = dir.path().join("block_input.npy");
        crate::tensor::write_npy(&xfile, input)?;
        let out = dir.path().join(protocol::OUTPUT_DIR);
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, &e))?;
        let wanted = self.wanted(taps);
        let reply = self.request(json!({
            "op": "block",
            "block": block,
            "input": {"file": std::path::absolute(&xfile).unwrap_or(xfile), "shape": input.shape()},
            "inputs": files,
            "taps": protocol::request_taps(&self.spec, &wanted),
            "output_dir": std::path::absolute(&out).unwrap_or(out.clone()),
            "dtype": self.spec.dtype.as_str(),
            "options": self.spec.options,
        }))?;
        let wanted = self.record_not_produced(&reply, wanted);
        let dims =
            Dims::new(Some(inputs.input_ids.batch), Some(inputs.input_ids.seq)).with_config(self.model.config.raw());
        protocol::read_outputs(&out, &self.spec, &wanted, &dims)
    }
}

fn keep_requested() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl ExternalModel {
    /// The `model` object of requests: what protocol 1's request.json has under `model`.
    fn model_json(&self) -> Value {
        json!({
            "id": self.model.id,
            "class": self.model.class,
            "family": self.model.class,
            "dir": std::path::absolute(&self.model.dir).unwrap_or(self.model.dir.clone()),
            "dtype": self.model.dtype.as_str(),
            "config": self.model.config.raw(),
        })
    }

    fn request_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("harness-{}-", self.spec.name))
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), &e))
    }

    /// The taps to ask for: `taps`, or every module, within what the engine can produce.
    fn wanted(&self, taps: &[&str]) -> Vec<String> {
        let asked: Vec<String> =
            if taps.is_empty() { self.modules.clone() } else { taps.iter().map(|t| t.to_string()).collect() };
        asked.into_iter().filter(|t| self.taps.as_ref().is_none_or(|allowed| allowed.contains(t))).collect()
    }

    /// One protocol-2 request on this model's engine process, started (again) if need be.
    fn request(&self, req: Value) -> Result<Value> {
        let slot = self.session.as_ref().expect("protocol 2");
        let mut guard = slot.lock().unwrap();
        if guard.as_mut().is_none_or(|s| !s.alive()) {
            *guard = Some(session::Session::start(&self.spec, self.model_json(), &self.spec.options)?);
        }
        let s = guard.as_mut().expect("started");
        let r = s.request(&self.spec, req);
        if r.is_err() && !s.alive() {
            *guard = None;
        }
        r
    }

    /// Keep the reply's `not_produced` (tap -> why) and return the taps still to read.
    fn record_not_produced(&self, reply: &Value, wanted: Vec<String>) -> Vec<String> {
        let Some(map) = reply.get("not_produced").and_then(Value::as_object) else { return wanted };
        let mut np = self.not_produced.lock().unwrap();
        for (tap, why) in map {
            np.insert(tap.clone(), why.as_str().map_or_else(|| why.to_string(), String::from));
        }
        wanted.into_iter().filter(|t| !map.contains_key(t)).collect()
    }

    /// The engine file's `options:` with the case's `engine_options.<engine>` merged over them.
    fn options(&self, ctx: Option<&crate::engine::RunContext<'_>>) -> Value {
        let mut o = self.spec.options.clone();
        if let (Some(Value::Object(base)), Some(Value::Object(mine))) =
            (Some(&mut o), ctx.and_then(|c| c.engine_options).and_then(|m| m.get(&self.spec.name)))
        {
            for (k, v) in mine {
                base.insert(k.clone(), v.clone());
            }
        }
        o
    }

    fn forward_v2(
        &self,
        dir: &Path,
        inputs: &Inputs,
        wanted: &[String],
        ctx: Option<&crate::engine::RunContext<'_>>,
    ) -> Result<Outputs> {
        let files = protocol::write_inputs(dir, inputs, true)?;
        let out = dir.join(protocol::OUTPUT_DIR);
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, &e))?;
        let reply = self.request(json!({
            "op": "forward",
            "case": ctx.map(|c| c.case),
            "inputs": files,
            "taps": protocol::request_taps(&self.spec, wanted),
            "output_dir": std::path::absolute(&out).unwrap_or(out.clone()),
            "dtype": self.spec.dtype.as_str(),
            "options": self.options(ctx),
        }))?;
        let wanted = self.record_not_produced(&reply, wanted.to_vec());
        let dims =
            Dims::new(Some(inputs.input_ids.batch), Some(inputs.input_ids.seq)).with_config(self.model.config.raw());
        let outputs = protocol::read_outputs(&out, &self.spec, &wanted, &dims)?;
        for hf in &wanted {
            if let (Some(t), Some(&kind)) = (outputs.get(hf), self.kinds.get(hf)) {
                self.check_leading_axes(hf, kind, t.shape(), inputs)?;
            }
        }
        Ok(outputs)
    }

    fn run_in(&self, dir: &Path, inputs: &Inputs, wanted: &[String]) -> Result<Outputs> {
        let spec = &self.spec;
        let request = protocol::write_request(dir, spec, &self.model, inputs, wanted)?;
        let request = std::path::absolute(&request).unwrap_or(request);
        let out = request.with_file_name(protocol::OUTPUT_DIR);
        let args: Vec<String> =
            spec.command.iter().map(|a| a.replace(spec::REQUEST_PLACEHOLDER, &request.to_string_lossy())).collect();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]).current_dir(&spec.root).envs(&spec.env).env(REQUEST_ENV, &request).env(OUTPUT_ENV, &out);
        let (stdout, stderr) = (dir.join("stdout.log"), dir.join("stderr.log"));
        let (ended, took) = process::run(cmd, spec.timeout, &stdout, &stderr)
            .map_err(|e| e.file(&spec.file).hint("check `command:` (it runs from the repository root)"))?;
        let tail = || {
            let (lines, which) = match process::tail(&stderr, TAIL_LINES) {
                l if l.is_empty() => (process::tail(&stdout, TAIL_LINES), "stdout"),
                l => (l, "stderr"),
            };
            if lines.is_empty() {
                "; it printed nothing".to_string()
            } else {
                format!("; the last {} lines of its {which}:\n    | {}", lines.len(), lines.join("\n    | "))
            }
        };
        match ended {
            process::Ended::Exited(st) if st.success() => {}
            process::Ended::Exited(st) => {
                return Err(Error::engine(format!(
                    "engine `{}` {} after {:.1} s (hint: set {KEEP_ENV}=1 to keep the request directory and run the \
                     command by hand){}",
                    spec.name,
                    process::describe_status(&st),
                    took.as_secs_f64(),
                    tail()
                ))
                .file(&spec.file));
            }
            process::Ended::TimedOut(t) => {
                return Err(Error::engine(format!(
                    "engine `{}` did not finish within its timeout of {} s and was killed with its process group \
                     (hint: raise `timeout:` if it is only slow, else look for a hang){}",
                    spec.name,
                    t.as_secs_f64(),
                    tail()
                ))
                .file(&spec.file));
            }
        }
        let dims =
            Dims::new(Some(inputs.input_ids.batch), Some(inputs.input_ids.seq)).with_config(self.model.config.raw());
        let outputs = protocol::read_outputs(&out, spec, wanted, &dims)?;
        // In forward order, so the error names the first tap that is off.
        for hf in wanted {
            if let (Some(t), Some(&kind)) = (outputs.get(hf), self.kinds.get(hf)) {
                self.check_leading_axes(hf, kind, t.shape(), inputs)?;
            }
        }
        Ok(outputs)
    }

    /// A tap's leading axes are fixed by its kind (`[batch, seq, ...]` for token taps): a tensor
    /// whose leading axes differ is in the wrong layout, whatever the rest of its shape.
    fn check_leading_axes(&self, hf: &str, kind: TapKind, shape: &[usize], inputs: &Inputs) -> Result<()> {
        let b = inputs.input_ids.batch;
        // A token tap follows one of the token sequences: the encoder's ids or, in an
        // encoder-decoder, the decoder's (`decoder_input_ids`, a named int64 [batch, seq] input).
        let mut seqs: Vec<usize> = inputs.has_ids().then_some(inputs.input_ids.seq).into_iter().collect();
        seqs.extend(
            inputs.named.iter().filter(|n| n.data.dtype() == "int64" && n.shape.len() == 2).map(|n| n.shape[1]),
        );
        let s = seqs.first().copied().unwrap_or(0);
        let (want, what): (Vec<usize>, String) = match kind {
            TapKind::Tokens => (vec![b, s], format!("[batch={b}, seq={}, ...]", join(&seqs))),
            TapKind::Positions => (vec![1, s], format!("[1, seq={}, ...]", join(&seqs))),
            TapKind::Rows => (vec![b], format!("[batch={b}, ...]")),
            // No fixed leading axes: the shape comparison at the tap says what differs.
            TapKind::Whole => return Ok(()),
        };
        let fits = |want: &[usize]| shape.len() >= want.len() && shape[..want.len()] == want[..];
        let seq_axis = usize::from(kind != TapKind::Rows);
        if fits(&want) || (seq_axis == 1 && seqs.iter().any(|&s| fits(&[want[0], s]))) {
            return Ok(());
        }
        let name = self.spec.rules.to_engine(hf).unwrap_or_else(|| hf.to_string());
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let hint = if reversed.len() >= want.len() && reversed[..want.len()] == want[..] {
            format!(
                "its dimensions look reversed (ggml order): add `{{engine: '{}', reverse: true}}` under `layouts:`",
                regex::escape(&name)
            )
        } else {
            "fix the engine's `layouts:` rules (reverse, transpose, reshape), or the shape it writes".to_string()
        };
        Err(Error::engine(format!(
            "engine `{}` gave tap `{hf}` (its `{name}`) shape {shape:?} after the layout rules; HF's is {what}",
            self.spec.name
        ))
        .file(&self.spec.file)
        .hint(hint))
    }
}

/// `5` or `7 or 5`.
fn join(seqs: &[usize]) -> String {
    seqs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" or ")
}

/// `harness diff A B --engine NAME`: B is that engine's dump, named and laid out its way.
pub struct EngineMapping<'a> {
    pub rules: &'a Rules,
}

impl crate::engine::Mapping for EngineMapping<'_> {
    fn name(&self, name: &str) -> Option<String> {
        Some(self.rules.to_hf(name))
    }
    fn layout(
        &self,
        name: &str,
        _hf_name: &str,
        t: crate::tensor::Tensor,
        expected: &[usize],
    ) -> Result<crate::tensor::Tensor> {
        // Without a request, `batch` and `seq` are the reference tensor's first two sizes.
        let dims = Dims::new(expected.first().copied(), expected.get(1).copied());
        self.rules.layout(name, t, &dims)
    }
}
