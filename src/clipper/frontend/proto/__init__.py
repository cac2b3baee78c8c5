"""The Open Inference Protocol's gRPC messages and service, generated from
``grpc_predict_v2.proto`` (``python -m clipper.frontend.proto.generate``).

The generated modules are committed, so the server needs only ``grpcio`` and
``protobuf`` at run time. Their descriptors live in a private descriptor pool:
a process may import ``tritonclient.grpc`` too, whose modules define the same
``inference.*`` messages in the default pool.
"""
