"""Darwin Core Archives (DwC-A) built from CKAN datastore rows, streamed page by page with flat memory.

This package owns the `package_dwc_archive` format of the original ckanpackager:

- extension definitions in GBIF's extension XML format (`<extension name=... rowType=...>` holding
  `<property name=... qualName=.../>`), read by `load_extension`. The Occurrence core, Simple Multimedia and
  MeasurementOrFact definitions ship in `packager/domain/dwc_data/`; an operator may point the settings at
  GBIF's own files instead (`extensions`);
- `DwcConfig`, the original's `DWC_*` options, and `DwcConfig.schema()`, which loads and checks them
  (`config`);
- `plan_archive`, which maps datastore columns onto terms from the column ids alone, so every header is
  known before the first row arrives (that is what makes streaming possible) (`layout`);
- `DwcArchiveBuilder`, which writes the core file straight into an open `zipfile.ZipFile`, spools extension
  rows to temporary files (a ZIP has one entry open for writing at a time) and, on `finish`, copies them in,
  then adds `meta.xml` and `eml.xml` (`builder`);
- `meta_xml` and `eml_bytes`, the two XML files of the archive (`layout`).
- `DatasetMetadata`, `render_eml` and `load_eml_template`: the EML of a GBIF-ready archive (`for_gbif`
  without `eml`) from the dataset's CKAN metadata, through a template operators may replace (`eml`);
- `GbifChecks`: the checks of GBIF's validator that run offline, over the core rows as written, with flat
  memory (`gbif_checks`).

Mapping, as the original did it: the id column (`DWC_ID_FIELD`, `_id`) becomes `id` (index 0) of the core
and `coreid` (index 0) of every extension file. Any other column goes to the term whose name it equals, or
else whose name equals its camel-cased form ("Event date" -> `eventDate`), looked up in the core and then in
the additional extensions (exact names in all of them first, then camel-cased ones). Columns matching no
term are gathered into the dynamic term (`dynamicProperties`) as a JSON object; several columns on one term
become a JSON object of `{column: value}` (null values left out, an empty object is an empty field). A column
named in `extension_fields` (`associatedMedia`) is not written to the core: its value (an object, a list of
objects, JSON text of either, or `|`-separated plain text for the configured `text_field`) becomes zero or
more rows of that extension's file, the configured defaults standing in for missing, null or empty keys,
unknown keys ignored, null and empty values giving no row. Rows of additional extensions fed by ordinary
columns are written only when one of their values is not empty.

Files: UTF-8 CSV, `,` between fields, a field enclosed in `"` (a `"` inside doubled) only when it holds a
comma, a quote, CR or LF, `\\n` after each record, one header line. Values are written as the other formats
write them (`packager.domain.writers.text_of`). Extension files that received no row are left out of the ZIP
and of `meta.xml`. Blocking code: run it in a thread.
"""

from packager.domain.dwc.builder import DwcArchiveBuilder, DwcFile, DwcSummary
from packager.domain.dwc.config import DwcConfig, DwcSchema, ExtensionFieldSpec, config_from_settings
from packager.domain.dwc.extensions import (
    DATA_DIRECTORY,
    MEASUREMENT_OR_FACT_EXTENSION,
    MULTIMEDIA_EXTENSION,
    OCCURRENCE_EXTENSION,
    Extension,
    Term,
    camel_case,
    extension_file_name,
    load_extension,
)
from packager.domain.dwc.layout import (
    EML_FILE,
    META_FILE,
    ArchiveLayout,
    DataFileLayout,
    MappedTerm,
    eml_bytes,
    meta_xml,
    plan_archive,
)

__all__ = [
    "DATA_DIRECTORY",
    "EML_FILE",
    "MEASUREMENT_OR_FACT_EXTENSION",
    "META_FILE",
    "MULTIMEDIA_EXTENSION",
    "OCCURRENCE_EXTENSION",
    "ArchiveLayout",
    "DataFileLayout",
    "DwcArchiveBuilder",
    "DwcConfig",
    "DwcFile",
    "DwcSchema",
    "DwcSummary",
    "Extension",
    "ExtensionFieldSpec",
    "MappedTerm",
    "Term",
    "camel_case",
    "config_from_settings",
    "eml_bytes",
    "extension_file_name",
    "load_extension",
    "meta_xml",
    "plan_archive",
]
