"""Static files storage: WhiteNoise's compressed, hashed names, with ES module imports rewritten too."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # chat.js imports ./connection.js and ./transcript.js: rewriting those imports to the hashed names keeps a
    # deploy from pairing a new module with a cached old one.
    support_js_module_import_aggregation = True
