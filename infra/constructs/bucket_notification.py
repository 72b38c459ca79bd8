"""S3 ObjectCreated -> one Lambda function, written on the bucket resource itself.

CDK's ``add_event_notification`` deploys its own custom-resource Lambda (AWS managed policy, no
DLQ, outside our packs' fixes) to write the same configuration; the bucket's own
``NotificationConfiguration`` needs none. S3 checks the invoke permission when the configuration
is written, so the permission comes first and names the bucket by its fixed name (an ARN string,
not a reference to the bucket: no dependency cycle).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct


def notify_on_object_created(
    scope: Construct,
    construct_id: str,
    *,
    bucket: s3.IBucket,
    bucket_arn: str,
    function: lambda_.IFunction,
    prefix: str,
    suffix: str | None = None,
) -> lambda_.CfnPermission:
    """Invoke ``function`` for every object created under ``prefix`` (ending in ``suffix``)."""
    stack = Stack.of(scope)
    permission = lambda_.CfnPermission(
        scope,
        construct_id,
        action="lambda:InvokeFunction",
        function_name=function.function_arn,
        principal="s3.amazonaws.com",
        source_account=stack.account,
        source_arn=bucket_arn,
    )
    rules = [s3.CfnBucket.FilterRuleProperty(name="prefix", value=prefix)]
    if suffix:
        rules.append(s3.CfnBucket.FilterRuleProperty(name="suffix", value=suffix))
    resource = bucket.node.default_child
    assert isinstance(resource, s3.CfnBucket)
    resource.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
        lambda_configurations=[
            s3.CfnBucket.LambdaConfigurationProperty(
                event="s3:ObjectCreated:*",
                function=function.function_arn,
                filter=s3.CfnBucket.NotificationFilterProperty(s3_key=s3.CfnBucket.S3KeyFilterProperty(rules=rules)),
            )
        ]
    )
    resource.node.add_dependency(permission)
    return permission
