"""The session-state keys that more than one module reads or writes (the state package, the pages, the tests), one
named constant each; a key only one page uses is a constant of that page."""

from __future__ import annotations

# the sidebar and the pair
PAIR_KEY = "pair_key"  # load_pair's arguments for the pair this session chose (loaded, or loading in the background)
PAIR_BUDGET = "pair_budget"  # the memory budget (bytes, or None) the session's pair was chosen with
PREVIOUS_PAIR = "previous_pair"  # the pair loaded before the one loading now: the session goes back to it on failure
LOAD_ERROR = "load_error"  # the message of the last pair that could not be loaded (the sidebar shows it)
LOAD_SEEN = "load_seen"  # the pair whose finished load the page was redrawn for (once, by the progress panel)
AUTOLOAD = "autoload"  # False: do not load the default pair by itself (the first run did, or a test says not to)
INTERIM_OPENED = "interim_pair"  # True: a first start opened base vs target while the default pair was building
INTERIM_READY = "interim_ready"  # True: the default pair was built since; the sidebar offers it

# the Probe page's inputs and results, which other pages read
PROBE_PROMPT = "probe_prompt"
PROBE_ANSWER = "probe_answer"
PROBE_CHAT = "probe_chat"
PROBE_SCORINGS = "probe_scorings"  # how many times this session scored: the drawn view carries it (data-scoring)
PROBE_RESULT = "probe_result"  # (pair key, ProbeResult dict) of the last scored input; the Report page reads it
PROBE_STORY_STARTED = "probe_story_started"  # True: the first visit's examples were filled in (or the visit began
# with a question of its own); the tests of other behaviour set it to start without them
PROBE_HANDOVER = "probe_handover"  # {"prompt", "answer"} of a Dataset item opened in Probe, scored on arrival

# results and widgets the tests read or set
ATTRIBUTION_RESULT = "attribution_result"  # (pair key, AttributionResult dict)
REPORT_BUILT = "report_built"  # (report, html bytes, file name) of the last report built
TRADEOFF_CHART = "tradeoff_chart"  # the clickable tradeoff chart (its selection)
DATASET_TABLE = "dataset_table"  # the per-item table (its selected row)

# the Probe page's settings, kept across pages (dashboard.state.inputs)
PROBE_TOPK = "probe_topk"
PROBE_VIEW = "probe_view"
PROBE_NEW = "probe_new"
PROBE_SAMPLE = "probe_sample"
PROBE_TEMPERATURE = "probe_temperature"
PROBE_SEED = "probe_seed"

# the question inputs (prompt, answer, chat) of the pages that ask one (dashboard.question), kept across pages
QUESTION_PAGES = ("probe", "lens", "attribution")
QUESTION_INPUTS = ("prompt", "answer", "chat")


def question_key(page: str, name: str) -> str:
    """The key of `page`'s question input `name` (one of QUESTION_INPUTS): PROBE_PROMPT is probe's prompt."""
    return f"{page}_{name}"
