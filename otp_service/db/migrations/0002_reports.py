"""Generated reports, kept in the database because a scheduled job's disk does not outlive the job."""

from peewee import AutoField, BlobField, CharField, DateTimeField, Model, TextField


def up(migrator, db):
    class Report(Model):
        id = AutoField()
        kind = CharField(max_length=16)
        period_start = DateTimeField()
        period_end = DateTimeField()
        created_at = DateTimeField(index=True)
        html = TextField()
        data_zip = BlobField()

        class Meta:
            database = db
            table_name = "reports"

    db.create_tables([Report])


def down(migrator, db):
    db.execute_sql("DROP TABLE reports")
