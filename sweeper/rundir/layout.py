"""Every file name a run folder holds, defined here once: a baseline run's, a sweep's, `evaluate`'s.
Who reads and writes them: `sweeper.rundir.records` (each trial's record), `sweeper.search.tables` (the
sweep's tables), `sweeper.rundir.heads` (saved heads), `sweeper.rundir.phase1_text` (phase 1's text file).

A baseline run (`sweeper baseline`) writes CONFIG_FILE, METRICS_FILE, TEXT_FILE and HEAD_FILE. A sweep
(`sweeper search`) writes:

    sweep.json     what was run: options, space, data and backbone, versions
    space.yaml     the search space file as used (a resumed sweep reads this copy)
    study.db       the Optuna study (SQLite): `optuna-dashboard sqlite:///.../study.db`
    ray/           Ray Tune's experiment folder (trial dirs, checkpoints, state); each trial dir also holds
                   the project's own record of it (TRIAL_CONFIG, TRIAL_EPOCHS, TRIAL_END), all that the
                   tables, confirm and evaluate read: Ray's state is pickled, and only --resume loads it
    trials.csv     one row per trial; history.csv one row per trial and epoch
    confirm/       `sweeper confirm`'s Ray experiment; confirm.csv and confirm_summary.csv beside it
    report/        `sweeper report`; evaluation/<label>/ from `sweeper evaluate`

Report, confirm, evaluate and the tables read only the project's own files written here, never Ray's pickled
state. Names only: no imports, so anything may read them.
"""

# --- any run folder
LOCK_FILE = ".lock"  # JSON {pid, host, command, since}; present while one process owns the folder
REPORT_DIR = "report"  # `sweeper report`'s output
EVALUATION_DIR = "evaluation"  # RUN_DIR/evaluation/<label>/ unless `sweeper evaluate --out` is given

# --- a baseline run, in the organisers' layout
METRICS_FILE = "metrics.jsonl"  # one JSON line per epoch
CONFIG_FILE = "config.json"  # the TrainConfig as run, with data and backbone facts
TEXT_FILE = "evaluation_metrics.txt"  # the organisers' summary text (also written by `evaluate`)
HEAD_FILE = "segmentation_head.pth"  # the head's state_dict, loadable by the organisers' test script

# --- a sweep
EXPERIMENT_DIR = "ray"
STUDY_FILE = "study.db"
SWEEP_FILE = "sweep.json"
SPACE_COPY = "space.yaml"
TRIALS_CSV = "trials.csv"
HISTORY_CSV = "history.csv"
STATE_FILE = "state.pt"  # inside each Ray checkpoint: RunState.state_dict() plus BEST_KEY
BEST_KEY = "best"  # in STATE_FILE: {"epoch", "metric", <metric>, "val_iou", "head"} of the trial's best epoch so far
CONFIRM_DIR = "confirm"  # Ray experiment of `sweeper confirm`, beside EXPERIMENT_DIR
CONFIRM_CSV = "confirm.csv"  # one row per (config, seed) re-run
CONFIRM_SUMMARY_CSV = "confirm_summary.csv"  # one row per config: mean, spread, gain, verdict
# The project's own record of each trial, in its folder under ray/ (report, confirm and evaluate read only
# these, never Ray's pickled experiment state, so a results folder is data, not code):
TRIAL_CONFIG = "config.json"  # written by the trial when it starts: number, Ray trial id, config as run, start time
TRIAL_EPOCHS = "epochs.jsonl"  # written by the trial: one JSON line per reported epoch, before its checkpoint
TRIAL_END = "end.json"  # written by the driver when the trial ends: status (TERMINATED or ERROR) and error line
TRIAL_MOVES = "moves.jsonl"  # written by the driver each time the trial lost its node (or process) and continued
#                              from its checkpoint elsewhere: one line {after_epoch, node_id, error, time}
CONFIRM_KEY = "confirm_of"  # config key naming the sweep trial a confirm run repeats
TRIAL_KEY = "trial_number"  # config key: the trial's number in the Optuna study, which the tables use too

# --- `sweeper evaluate`'s folder
METRICS_JSON = "test_metrics.json"
MASKS_DIR, COLOR_DIR, COMPARISONS_DIR = "masks", "masks_color", "comparisons"
MASK_NAME, COLOR_NAME = "{}_pred.png", "{}_pred_color.png"  # of an image's stem, as the organisers name them
COMPARISON_NAME = "sample_{}_comparison.png"  # k = 0, 1, ... in file order: the organisers' three panels
BAR_CHART = "per_class_metrics.png"  # the organisers' per-class bars
DETAIL_NAME = "sample_{}_details.png"  # ours, beside theirs in comparisons/: with an error map and the legend
BAR_CHART_DETAIL = "per_class_test_vs_val.png"  # ours: test in both flavours next to validation, per class
