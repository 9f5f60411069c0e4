"""result.json as a typed document: one pydantic model per section, the whole as `Result`.

The analysis builds the sections (analysis/*), report/result.py the recorded part, and every
reader (reports, sweep, calibration) loads the model instead of walking dicts.
docs/result.schema.json is generated from it: `python -m vmigrate.result.schema`.

    base        the strict base model, number types, {during, extra}
    document    Recorded (what the run knew) and Result (plus the analysis), Event, ...
    migration   migration, phases, data        service     service
    resources   resources (per host)           outage      outage, waterfall, capture
    prediction  prediction                     fault       fault
    preflight   preflight                      checks      consistency checks
    files       write_result, load_result      schema      the schema generator
"""

from vmigrate.result.document import SCHEMA_VERSION, Recorded, Result
from vmigrate.result.files import RESULT_FILE, load_recorded, load_result, write_result

__all__ = [
    "RESULT_FILE",
    "SCHEMA_VERSION",
    "Recorded",
    "Result",
    "load_recorded",
    "load_result",
    "write_result",
]
