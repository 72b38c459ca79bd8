"""ExportRunner: compliance exports of the hash-chained audit log from Postgres to S3.

Entry points (Lambda handler strings ``handlers.export_runner.<module>.handler``):
- ``runner``: SQS consumer running one export job per message (export_job.py);
- ``sweeper``: scheduled; fails jobs stuck in running or never started (jobs.sweep_jobs).
Library: ``producer.create_export_job`` (the API layer's call), ``audit_writer.write_audit_event``,
``urls.reissue_download_url``, ``verify.verify_file``; operators use ``python -m
handlers.export_runner`` (cli.py). Schema: ordered SQL files in ``migrations/`` (migrate.py).
"""
